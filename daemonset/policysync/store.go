package policysync

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pullguard/pullguard/daemonset/hoststate"
	"github.com/pullguard/pullguard/plugin/policy"
)

// MaxObjects bounds how many policy objects one node renders, so a flood of objects cannot fill
// the node's disk or make every policy reload slow.
const MaxObjects = 10000

// docSeparator separates the rendered objects of one file. Render's output never contains it:
// it starts every document with a comment and the YAML encoder never emits a document marker.
const docSeparator = "---\n"

// Store is the synced directory: one file per group of objects (Key.FileName), each replaced
// by writing a temporary file, syncing it and renaming it over the old one, so the host daemon
// only ever sees a whole group. Only changed groups are written.
type Store struct {
	Dir string
}

// Load reads what the agent wrote last time, by object. A missing directory is an empty set.
// Documents that do not parse are left out (and reported in skipped): the next Write replaces
// their file.
func (s Store) Load() (files map[Key][]byte, skipped []string, err error) {
	files = map[Key][]byte{}
	entries, err := os.ReadDir(s.Dir)
	if os.IsNotExist(err) {
		return files, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read synced policies %s: %w", s.Dir, err)
	}
	for _, e := range entries {
		if !ourFile(e.Name()) || !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(s.Dir, e.Name())
		data, err := hoststate.ReadBounded(path, policy.MaxPolicyFileBytes)
		if err != nil {
			return nil, nil, fmt.Errorf("read synced policy: %w", err)
		}
		for _, doc := range bytes.Split(data, []byte("\n"+docSeparator)) {
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			doc = append(bytes.TrimSuffix(doc, []byte("\n")), '\n')
			ps, err := policy.ParseYAML(doc, path)
			if err != nil || len(ps) != 1 {
				skipped = append(skipped, fmt.Sprintf("%s: %v", path, err))
				continue
			}
			k := Key{Kind: ps[0].Kind, Namespace: ps[0].Namespace, Name: ps[0].Name}
			if k.FileName() != e.Name() {
				skipped = append(skipped, fmt.Sprintf("%s: holds %s, which belongs in %s", path, k, k.FileName()))
				continue
			}
			files[k] = doc
		}
	}
	return files, skipped, nil
}

// Write makes the directory hold exactly files (rendered objects by key). It reports whether
// anything changed. A group whose file would exceed policy.MaxPolicyFileBytes is not written
// (its previous file stays) and reported in the error, after every other group is written.
func (s Store) Write(files map[Key][]byte) (bool, error) {
	if len(files) > MaxObjects {
		return false, fmt.Errorf("write synced policies: %d objects, more than %d", len(files), MaxObjects)
	}
	groups := map[string][]Key{}
	for k := range files {
		groups[k.FileName()] = append(groups[k.FileName()], k)
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", s.Dir, err)
	}
	changed := false
	var errs []string
	names := make([]string, 0, len(groups))
	for n := range groups {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		keys := groups[name]
		slices.SortFunc(keys, func(a, b Key) int { return strings.Compare(a.Name, b.Name) })
		var buf bytes.Buffer
		for i, k := range keys {
			if i > 0 {
				buf.WriteString(docSeparator)
			}
			buf.Write(files[k])
		}
		if buf.Len() > policy.MaxPolicyFileBytes {
			errs = append(errs, fmt.Sprintf("%s: %d objects render to more than %d bytes; its previous file stays", name, len(keys), policy.MaxPolicyFileBytes))
			continue
		}
		path := filepath.Join(s.Dir, name)
		if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, buf.Bytes()) {
			continue
		}
		if err := hoststate.WriteFileAtomic(path, buf.Bytes(), 0o644); err != nil {
			return changed, fmt.Errorf("write synced policy: %w", err)
		}
		changed = true
	}
	// Groups with no objects left: their file goes.
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		return changed, fmt.Errorf("read synced policies %s: %w", s.Dir, err)
	}
	for _, e := range entries {
		if ourFile(e.Name()) && groups[e.Name()] == nil {
			if err := os.Remove(filepath.Join(s.Dir, e.Name())); err != nil {
				return changed, fmt.Errorf("remove synced policy %s: %w", e.Name(), err)
			}
			changed = true
		}
	}
	if changed {
		if err := hoststate.SyncDir(s.Dir); err != nil {
			return changed, err
		}
	}
	if len(errs) > 0 {
		return changed, fmt.Errorf("write synced policies: %s", strings.Join(errs, "; "))
	}
	return changed, nil
}
