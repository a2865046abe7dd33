package policysync

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/pullguard/pullguard/plugin/policy"
)

// MaxObjects bounds how many policy objects one node renders, so a flood of objects cannot fill
// the node's disk or make every policy reload slow.
const MaxObjects = 10000

// Snapshots keeps the synced directory. Dir is a symlink to a sibling directory holding one file
// per object; a change writes a complete new sibling and swaps the link with one rename, so the
// host daemon (which reloads on change) only ever sees a whole set, never half of an update.
type Snapshots struct {
	Dir string
}

// Load reads the current snapshot: the files the agent wrote last time, by key. A missing
// directory is an empty set. Files that do not parse as a policy are left out (and reported in
// skipped): they were not written by a working agent, and the next Write drops them.
func (s Snapshots) Load() (files map[Key][]byte, skipped []string, err error) {
	files = map[Key][]byte{}
	entries, err := os.ReadDir(s.Dir)
	if os.IsNotExist(err) {
		return files, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read synced policies %s: %w", s.Dir, err)
	}
	for _, e := range entries {
		k, ok := KeyFromFileName(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(s.Dir, e.Name())
		data, err := readBounded(path, policy.MaxPolicyFileBytes)
		if err != nil {
			return nil, nil, err
		}
		if _, err := policy.ParseYAML(data, path); err != nil {
			skipped = append(skipped, err.Error())
			continue
		}
		files[k] = data
	}
	return files, skipped, nil
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read synced policy: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read synced policy %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("read synced policy %s: larger than %d bytes", path, limit)
	}
	return data, nil
}

// Write makes files the content of Dir. It reports whether anything changed. On error the
// previous snapshot stays in place.
func (s Snapshots) Write(files map[Key][]byte) (bool, error) {
	if len(files) > MaxObjects {
		return false, fmt.Errorf("write synced policies: %d objects, more than %d", len(files), MaxObjects)
	}
	named := make(map[string][]byte, len(files))
	for k, b := range files {
		named[k.FileName()] = b
	}
	return swapDir(s.Dir, named)
}

// swapDir makes files (name -> content) the content of link: a complete sibling directory
// ".<base>-<hash>" is written and made durable, then link (a symlink) is swapped to it with one
// rename and superseded siblings are removed.
func swapDir(link string, files map[string][]byte) (bool, error) {
	parent := filepath.Dir(link)
	prefix := "." + filepath.Base(link) + "-"
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	h := sha256.New()
	for _, n := range names {
		fmt.Fprintf(h, "%q %d\n", n, len(files[n]))
		h.Write(files[n])
	}
	target := prefix + hex.EncodeToString(h.Sum(nil))[:16]
	if cur, err := os.Readlink(link); err == nil && cur == target {
		if _, err := os.Stat(filepath.Join(parent, target)); err == nil {
			return false, nil
		}
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", parent, err)
	}
	dir := filepath.Join(parent, target)
	if err := os.RemoveAll(dir); err != nil {
		return false, fmt.Errorf("clear %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", dir, err)
	}
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), files[n], 0o644); err != nil {
			_ = os.RemoveAll(dir)
			return false, fmt.Errorf("write %s: %w", n, err)
		}
	}
	if err := syncDir(dir); err != nil {
		_ = os.RemoveAll(dir)
		return false, err
	}
	// A real directory where the link belongs (made by hand) cannot be replaced by a rename;
	// it is moved aside once, not deleted: it may hold someone's work.
	if fi, err := os.Lstat(link); err == nil && fi.IsDir() {
		if err := os.Rename(link, filepath.Join(parent, prefix+"previous")); err != nil {
			return false, fmt.Errorf("move aside %s: %w", link, err)
		}
	}
	tmp := link + ".tmp"
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return false, fmt.Errorf("link %s: %w", link, err)
	}
	if err := os.Rename(tmp, link); err != nil {
		return false, fmt.Errorf("swap %s: %w", link, err)
	}
	// The old snapshot is deleted next; the swap must be on disk first or a crash could leave
	// the link naming a deleted directory.
	if d, err := os.Open(parent); err == nil {
		_ = d.Sync()
		d.Close()
	}
	removeOld(link, target)
	return true, nil
}

// removeOld deletes superseded snapshots; a failure only leaves garbage behind.
func removeOld(link, current string) {
	parent := filepath.Dir(link)
	prefix := "." + filepath.Base(link) + "-"
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, prefix) && n != current && n != prefix+"previous" {
			_ = os.RemoveAll(filepath.Join(parent, n))
		}
	}
}

// syncDir makes the new files durable before the link points at them, so a crash cannot leave
// the link naming empty files (an empty file loads as no policy at all). One syncfs(2) for the
// whole filesystem instead of an fsync per file keeps a 1,000-object snapshot fast.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
