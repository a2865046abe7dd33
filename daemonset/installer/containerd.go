package installer

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/pullguard/pullguard/daemonset/hoststate"
	"github.com/pullguard/pullguard/plugin/nri"
)

// containerd's side of the node.
const (
	// DefaultContainerdConfig is containerd's config file when it is
	// started without --config.
	DefaultContainerdConfig = "/etc/containerd/config.toml"
	// ContainerdUnit is the host's containerd service.
	ContainerdUnit = "containerd.service"
	// NRIDropInName is the name of pullguard's drop-in: containerd reads
	// the files an imports glob matches in name order, and 99- sorts after
	// the usual numbered drop-ins.
	NRIDropInName = "99-pullguard-nri.toml"
	// DefaultNRIDropIn is where the drop-in goes when no import of the
	// main config covers a directory: containerd's own default drop-in
	// directory, added to the main config's imports by exact path.
	DefaultNRIDropIn = "/etc/containerd/conf.d/" + NRIDropInName

	// containerd's own defaults, written out in the drop-in when the
	// node's config does not set them.
	defaultNRISocket = "/var/run/nri/nri.sock"
	// nriRequestTimeout is containerd's default plugin_request_timeout:
	// how long containerd waits for one plugin's answer before it drops
	// the plugin (and, with the plugin required, refuses creates until it
	// registers again). pullguard's [nri] timeout must stay under it.
	nriRequestTimeout      = "2s"
	nriRegistrationTimeout = "5s"

	maxContainerdFileBytes = 4 << 20
	maxContainerdFiles     = 64
)

// pluginSpec is how pullguard's NRI plugin presents itself, from the
// config being installed.
type pluginSpec struct {
	name, index string
	timeout     time.Duration // [nri] timeout
}

// ctdFile is one containerd config file as containerd reads it; serve's
// reader and the installer read them the same way.
type ctdFile = nri.ContainerdFile

// importCovers says whether containerd would read file through the
// imports entry imp of parent.
func importCovers(parent, imp, file string) bool {
	pat := nri.ImportPattern(parent, imp)
	if !strings.Contains(pat, "*") {
		return pat == file
	}
	ok, err := filepath.Match(pat, file)
	return err == nil && ok
}

// mergedNRI merges the NRI tables of files, skipping the file at skip, as
// containerd merges them (nri.MergeTables).
func mergedNRI(files []ctdFile, skip string) map[string]any {
	var out map[string]any
	for _, f := range files {
		if f.Path == skip {
			continue
		}
		if t := f.Plugin(nri.ContainerdPluginID); t != nil {
			out = nri.MergeTables(out, t)
		}
	}
	return out
}

// sandboxImage is the sandbox image containerd's config names, the last
// file naming one winning: pinned_images.sandbox of the CRI image service
// (versions 3 and 4), or the CRI plugin's sandbox_image (version 2, which
// containerd moves there). "" when none does.
func sandboxImage(files []ctdFile) string {
	img := ""
	for _, f := range files {
		if t := f.Plugin("io.containerd.cri.v1.images"); t != nil {
			if pinned, ok := t["pinned_images"].(map[string]any); ok {
				if s, ok := pinned["sandbox"].(string); ok && s != "" {
					img = s
					continue
				}
			}
		}
		if t := f.Plugin("io.containerd.grpc.v1.cri"); t != nil {
			if s, ok := t["sandbox_image"].(string); ok && s != "" {
				img = s
			}
		}
	}
	return img
}

// containerdPlan is what install will change in containerd's config, and
// what it learnt about it. Nothing is written by planning.
type containerdPlan struct {
	main   string // host path of containerd's main config
	dropIn string // host path of pullguard's drop-in
	// edits are in write order: the drop-in before the main file's
	// imports, so containerd never imports a file that is not there yet.
	edits []plannedEdit
	// mkdirs are the directories to create for the drop-in, outermost
	// first.
	mkdirs []string
	nri    hoststate.NodeNRI
	// tolerate is the break-glass annotation containerd honours ("" none).
	tolerate string
	// notes say what the drop-in changes in containerd's behaviour.
	notes []string
}

// planContainerd plans containerd's NRI settings so that its default
// validator requires pullguard: a drop-in in a directory the main config
// already imports, or else the drop-in at DefaultNRIDropIn and its path
// added to the main config's imports. The result is checked, before
// anything is written, with the reader serve uses at start.
func planContainerd(root hoststate.Root, main string, spec pluginSpec) (*containerdPlan, error) {
	host := os.DirFS(string(root))
	mainFile, err := readHostFile(root, main, maxContainerdFileBytes)
	if err != nil {
		return nil, err
	}
	var files []ctdFile
	if mainFile != nil {
		if files, err = nri.ReadContainerdFiles(host, main); err != nil {
			return nil, err
		}
	} else {
		// containerd runs on its defaults without a config file (its
		// default imports are not read then); install creates one.
		mainFile = &hostFile{hostPath: main, mode: 0o644, absent: true}
	}
	for _, f := range files {
		if d, ok := f.Raw["disabled_plugins"].([]any); ok && slices.Contains(d, any(nri.ContainerdPluginID)) {
			return nil, fmt.Errorf("containerd's config %s lists %s in disabled_plugins: remove it there (install does not override an explicit disable of NRI)",
				f.Path, nri.ContainerdPluginID)
		}
	}

	var mainImports []string
	var mainVersion int64
	if len(files) > 0 {
		mainImports, mainVersion = files[0].Imports, files[0].Version
	}
	// Candidates: a directory an imports glob of the main file already
	// reads (the last entry first: containerd reads it later), then the
	// default drop-in added to the imports.
	var candidates []string
	for i := len(mainImports) - 1; i >= 0; i-- {
		pat := nri.ImportPattern(main, mainImports[i])
		c := filepath.Join(filepath.Dir(pat), NRIDropInName)
		if !strings.ContainsAny(c, "*?[\\") && importCovers(main, mainImports[i], c) && !slices.Contains(candidates, c) {
			candidates = append(candidates, c)
		}
	}
	covered := len(candidates)
	if !slices.Contains(candidates, DefaultNRIDropIn) {
		candidates = append(candidates, DefaultNRIDropIn)
	}
	var reasons []string
	for i, c := range candidates {
		p, err := planDropIn(root, host, mainFile, files, mainVersion, c, i >= covered, spec)
		if err == nil {
			p.nri.ContainerdConfig, p.nri.SandboxImage = main, sandboxImage(files)
			return p, nil
		}
		var refuse refusal
		if errors.As(err, &refuse) {
			return nil, err
		}
		reasons = append(reasons, fmt.Sprintf("%s: %v", c, err))
	}
	return nil, fmt.Errorf("no place for pullguard's NRI drop-in works with containerd's config %s: %s", main, strings.Join(reasons, "; "))
}

// refusal is a planning error no other drop-in place would avoid.
type refusal struct{ error }

// planDropIn plans the drop-in at dropIn; addImport adds its path to the
// main file's imports.
func planDropIn(root hoststate.Root, host fs.FS, mainFile *hostFile, files []ctdFile, mainVersion int64, dropIn string, addImport bool, spec pluginSpec) (*containerdPlan, error) {
	base := mergedNRI(files, dropIn)
	section, p, err := nriSection(base, spec)
	if err != nil {
		return nil, refusal{err}
	}
	p.main, p.dropIn = mainFile.hostPath, dropIn
	content, err := renderDropIn(section, mainVersion)
	if err != nil {
		return nil, refusal{err}
	}
	cur, err := readHostFile(root, dropIn, maxContainerdFileBytes)
	if err != nil {
		return nil, refusal{err}
	}
	if cur == nil {
		cur = &hostFile{hostPath: dropIn, mode: 0o644, absent: true}
		for d := path.Dir(dropIn); d != "/"; d = path.Dir(d) {
			if _, err := os.Stat(root.Path(d)); err == nil {
				break
			}
			p.mkdirs = append([]string{d}, p.mkdirs...)
		}
	}
	if cur.absent || !bytes.Equal(cur.data, content) {
		p.edits = append(p.edits, plannedEdit{cur, content})
	}
	if addImport {
		var data []byte
		if mainFile.absent {
			data = []byte("# Written by pullguard-agent install (containerd had no config file); removed by pullguard-agent uninstall.\n" +
				"version = 3\nimports = [" + strconv.Quote(dropIn) + "]\n")
		} else if data, err = addContainerdImport(mainFile.data, dropIn); err != nil {
			return nil, refusal{fmt.Errorf("%s: %w", mainFile.hostPath, err)}
		}
		p.edits = append(p.edits, plannedEdit{mainFile, data})
	}

	// Check the result as containerd and serve will read it.
	planned := map[string][]byte{}
	for _, e := range p.edits {
		planned[e.file.hostPath] = e.data
	}
	view := overlayFS{base: host, files: planned}
	after, err := nri.ReadContainerdFiles(view, mainFile.hostPath)
	if err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(after, func(f ctdFile) bool { return f.Path == dropIn }) {
		return nil, errors.New("containerd would not read it")
	}
	if got := mergedNRI(after, ""); !reflect.DeepEqual(got, section) {
		return nil, errors.New("a file containerd reads after it sets NRI keys of its own")
	}
	c, err := nri.ReadContainerdNRIFS(view, mainFile.hostPath)
	if err != nil {
		return nil, err
	}
	if probs := c.Problems(spec.name, spec.index); len(probs) > 0 {
		return nil, errors.New(strings.Join(probs, "; "))
	}
	return p, nil
}

// nriSection is the NRI table the drop-in writes: every key containerd's
// merged section had (containerd v2.4.2 merges a later file's tables into
// earlier ones key by key, but a loader that replaced the whole section
// would lose what the drop-in did not repeat), with NRI on, the socket,
// the timeouts, and the default validator on and requiring pullguard.
func nriSection(base map[string]any, spec pluginSpec) (map[string]any, *containerdPlan, error) {
	p := &containerdPlan{}
	s := nri.MergeTables(base, nil)
	if v, ok := s["disable_connections"].(bool); ok && v {
		return nil, nil, errors.New("containerd's NRI has disable_connections = true, so no external plugin can connect and pullguard, which runs as one, " +
			"could never register; install does not change that setting")
	}
	if v, _ := s["disable"].(bool); v {
		p.notes = append(p.notes, "NRI was disabled in containerd's config; the drop-in enables it")
	}
	s["disable"] = false
	str := func(key, def string) string {
		if v, ok := s[key].(string); ok && v != "" {
			return v
		}
		s[key] = def
		return def
	}
	p.nri.Socket = str("socket_path", defaultNRISocket)
	str("plugin_registration_timeout", nriRegistrationTimeout)
	reqTimeout := str("plugin_request_timeout", nriRequestTimeout)
	d, err := time.ParseDuration(reqTimeout)
	if err != nil {
		return nil, nil, fmt.Errorf("containerd's NRI plugin_request_timeout %q: %w", reqTimeout, err)
	}
	if spec.timeout >= d {
		return nil, nil, fmt.Errorf("[nri] timeout %s is not under containerd's NRI plugin_request_timeout %s: containerd would drop pullguard on a slow answer "+
			"and refuse creates until it registers again; lower [nri] timeout", spec.timeout, d)
	}

	v, _ := s["default_validator"].(map[string]any)
	if v == nil {
		v = map[string]any{}
	}
	v["enable"] = true
	var required []any
	if r, ok := v["required_plugins"].([]any); ok {
		required = r
	}
	if !slices.Contains(required, any(spec.name)) && !slices.Contains(required, any(spec.index+"-"+spec.name)) {
		required = append(slices.Clip(required), spec.name)
	}
	v["required_plugins"] = required
	tol, _ := v["tolerate_missing_plugins_annotation"].(string)
	v["tolerate_missing_plugins_annotation"] = tol
	p.tolerate = tol
	s["default_validator"] = v
	return s, p, nil
}

// renderDropIn writes the drop-in file. Its version is 3 unless the main
// file is version 4: containerd refuses to start on a config file of a
// version newer than it knows, every containerd with the NRI default
// validator reads version 3, and containerd migrates an older file up to
// its own version, which changes nothing in a file holding only NRI's
// table (only the CRI plugin's tables move). A main file of version 4
// proves the running containerd reads 4, and matching it spares containerd
// the migration and its warning at every start.
func renderDropIn(section map[string]any, mainVersion int64) ([]byte, error) {
	version := int64(3)
	if mainVersion == 4 {
		version = 4
	}
	var buf bytes.Buffer
	buf.WriteString(`# Written by pullguard-agent install; removed by pullguard-agent uninstall, which also puts
# back containerd's config as it was.
#
# containerd's NRI with its default validator requiring pullguard: containerd
# refuses every container create while pullguard's NRI plugin is not
# registered. Every key of the NRI section containerd's config had is
# repeated here, whatever containerd merges.
#
# Break-glass: tolerate_missing_plugins_annotation may name a pod annotation;
# a pod carrying it starts while pullguard is absent, and is still decided
# by pullguard while it is registered.
`)
	doc := map[string]any{
		"version": version,
		"plugins": map[string]any{nri.ContainerdPluginID: section},
	}
	if err := toml.NewEncoder(&buf).Encode(doc); err != nil {
		return nil, fmt.Errorf("render containerd's NRI drop-in: %w", err)
	}
	return buf.Bytes(), nil
}

var (
	ctdTableHeader = regexp.MustCompile(`(?m)^[ \t]*\[`)
	ctdImportsLine = regexp.MustCompile(`(?m)^[ \t]*imports[ \t]*=[ \t]*\[`)
	ctdVersionLine = regexp.MustCompile(`(?m)^[ \t]*version[ \t]*=.*$`)
)

// addContainerdImport adds file to the main config's top-level imports
// with a textual edit that keeps every other byte: inside the existing
// list, before its closing bracket, or as a new imports line after the
// version line (or at the top). The edit is verified by parsing: imports
// gained file and nothing else changed.
func addContainerdImport(data []byte, file string) ([]byte, error) {
	var before map[string]any
	if _, err := toml.Decode(string(data), &before); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	entry := strconv.Quote(file)
	top := len(data)
	if loc := ctdTableHeader.FindIndex(data); loc != nil {
		top = loc[0]
	}
	var out []byte
	if loc := ctdImportsLine.FindIndex(data[:top]); loc != nil {
		end, last, err := listEnd(data, loc[1])
		if err != nil {
			return nil, err
		}
		sep := ", "
		if last == '[' || last == ',' {
			sep = ""
		}
		out = slices.Concat(data[:end], []byte(sep+entry), data[end:])
	} else {
		line := []byte("imports = [" + entry + "]\n")
		at := 0
		if loc := ctdVersionLine.FindIndex(data[:top]); loc != nil {
			at = loc[1] + 1
			if at > len(data) {
				data = append(slices.Clip(data), '\n')
			}
		}
		out = slices.Concat(data[:at], line, data[at:])
	}
	var after map[string]any
	if _, err := toml.Decode(string(out), &after); err != nil {
		return nil, fmt.Errorf("adding %s to imports breaks the file: %w", file, err)
	}
	want := maps.Clone(before)
	prev, _ := before["imports"].([]any)
	want["imports"] = append(slices.Clip(prev), file)
	if !reflect.DeepEqual(want, after) {
		return nil, fmt.Errorf("could not add %s to imports textually; add it by hand", file)
	}
	return out, nil
}

// listEnd scans a TOML array from just after its '[' at start, past
// strings and comments, and returns the offset of its closing ']' and the
// last character before it that is not space or comment.
func listEnd(data []byte, start int) (end int, last byte, err error) {
	last = '['
	depth := 0
	for i := start; i < len(data); i++ {
		c := data[i]
		switch {
		case c == '#':
			for i < len(data) && data[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'':
			j, err := stringEnd(data, i)
			if err != nil {
				return 0, 0, err
			}
			i, last = j, c
		case c == '[':
			depth++
			last = c
		case c == ']':
			if depth == 0 {
				return i, last, nil
			}
			depth--
			last = c
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
		default:
			last = c
		}
	}
	return 0, 0, errors.New("imports list has no closing bracket")
}

// stringEnd returns the offset of the quote closing the string opened at
// i (basic "..." with escapes, or literal '...'; multi-line forms are not
// expected in imports and fail the verification instead).
func stringEnd(data []byte, i int) (int, error) {
	q := data[i]
	for j := i + 1; j < len(data); j++ {
		switch data[j] {
		case '\\':
			if q == '"' {
				j++
			}
		case '\n':
			return 0, errors.New("unterminated string in imports")
		case q:
			return j, nil
		}
	}
	return 0, errors.New("unterminated string in imports")
}

// overlayFS is the host's / with planned file contents over it (a nil
// content hides the file), so a plan can be read as containerd will read
// it once written.
type overlayFS struct {
	base  fs.FS
	files map[string][]byte // host path -> content
}

func (o overlayFS) Open(name string) (fs.File, error) {
	if data, ok := o.files["/"+name]; ok {
		if data == nil {
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		}
		return &memFile{name: path.Base(name), r: bytes.NewReader(data), size: int64(len(data))}, nil
	}
	return o.base.Open(name)
}

// Glob implements fs.GlobFS, so fs.Glob sees the planned files.
func (o overlayFS) Glob(pattern string) ([]string, error) {
	matches, err := fs.Glob(o.base, pattern)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range matches {
		if data, ok := o.files["/"+m]; !ok || data != nil {
			out = append(out, m)
		}
	}
	for p, data := range o.files {
		name := strings.TrimPrefix(p, "/")
		if ok, _ := path.Match(pattern, name); ok && data != nil && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
}

type memFile struct {
	name string
	r    *bytes.Reader
	size int64
}

func (f *memFile) Stat() (fs.FileInfo, error) { return memInfo{f.name, f.size}, nil }
func (f *memFile) Read(b []byte) (int, error) { return f.r.Read(b) }
func (f *memFile) Close() error               { return nil }

type memInfo struct {
	name string
	size int64
}

func (i memInfo) Name() string       { return i.name }
func (i memInfo) Size() int64        { return i.size }
func (i memInfo) Mode() fs.FileMode  { return 0o644 }
func (i memInfo) ModTime() time.Time { return time.Time{} }
func (i memInfo) IsDir() bool        { return false }
func (i memInfo) Sys() any           { return nil }
