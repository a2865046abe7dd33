package nri

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// ContainerdPluginID is NRI's plugin in containerd, and its table under
// [plugins] in containerd's config (versions 2 to 4).
const ContainerdPluginID = "io.containerd.nri.v1.nri"

const nriPluginID = ContainerdPluginID

// maxContainerdConfigBytes bounds one containerd config file read.
const maxContainerdConfigBytes = 4 << 20

// maxImports bounds the files one containerd config may import.
const maxImports = 64

// ContainerdNRI is what containerd's config says about NRI.
type ContainerdNRI struct {
	Enabled            bool
	SocketPath         string
	RequestTimeout     time.Duration // 0: containerd's default
	ValidatorEnabled   bool
	RequiredPlugins    []string
	TolerateAnnotation string
	// Files are the config files read, the main one first.
	Files []string
}

// Requires reports whether the default validator refuses creates while the
// plugin name (or idx-name) is not registered.
func (c *ContainerdNRI) Requires(name, index string) bool {
	return c.Enabled && c.ValidatorEnabled &&
		(slices.Contains(c.RequiredPlugins, name) || slices.Contains(c.RequiredPlugins, index+"-"+name))
}

// Problems lists why enforcement would be off or could be lifted, in words
// an operator can act on; empty when containerd requires the plugin.
func (c *ContainerdNRI) Problems(name, index string) []string {
	var out []string
	if !c.Enabled {
		out = append(out, fmt.Sprintf("NRI is disabled in containerd (%s: [plugins.'%s'] disable = true, or the plugin is in disabled_plugins)", c.Files[0], nriPluginID))
	}
	if !c.ValidatorEnabled {
		out = append(out, fmt.Sprintf("containerd's NRI default validator is off ([plugins.'%s'.default_validator] enable = true is missing)", nriPluginID))
	}
	if c.Enabled && c.ValidatorEnabled && !c.Requires(name, index) {
		out = append(out, fmt.Sprintf("containerd's NRI default validator does not require %q (required_plugins = %q): containers would start while pullguard is down", name, c.RequiredPlugins))
	}
	return out
}

// ReadContainerdNRI reads containerd's config file and the files it imports,
// the way containerd merges them (see ReadContainerdNRIFS).
func ReadContainerdNRI(path string) (*ContainerdNRI, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("containerd config %s: %w", path, err)
	}
	return ReadContainerdNRIFS(os.DirFS("/"), abs)
}

// ReadContainerdNRIFS reads containerd's config at the absolute path and
// the files it imports from fsys, which holds the node's / (so a host
// mounted elsewhere, or a planned edit not yet written, reads as containerd
// will read it). Files are read in containerd's order: the main file, then
// its imports (globs, relative to the importing file), breadth first.
// containerd merges the plugin tables of later files into earlier ones key
// by key, tables within tables too, and a later value (a list included)
// replaces an earlier one; disabled_plugins add up.
func ReadContainerdNRIFS(fsys fs.FS, path string) (*ContainerdNRI, error) {
	type nriSection struct {
		Disable                bool   `toml:"disable"`
		SocketPath             string `toml:"socket_path"`
		PluginRequestTimeout   string `toml:"plugin_request_timeout"`
		DefaultValidatorConfig struct {
			Enable                    bool     `toml:"enable"`
			RequiredPlugins           []string `toml:"required_plugins"`
			TolerateMissingAnnotation string   `toml:"tolerate_missing_plugins_annotation"`
		} `toml:"default_validator"`
	}
	files, err := ReadContainerdFiles(fsys, path)
	if err != nil {
		return nil, err
	}
	out := &ContainerdNRI{}
	var (
		merged   map[string]any
		disabled bool
	)
	for _, f := range files {
		out.Files = append(out.Files, f.Path)
		if d, ok := f.Raw["disabled_plugins"].([]any); ok && slices.Contains(d, any(nriPluginID)) {
			disabled = true
		}
		if t := f.Plugin(nriPluginID); t != nil {
			merged = MergeTables(merged, t)
		}
	}
	if merged == nil {
		// containerd 2.x enables NRI by default, with the validator off.
		out.Enabled = !disabled
		return out, nil
	}
	// The merged table is decoded as one section again, so a value of the
	// wrong type is reported as it would be from a single file.
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(merged); err != nil {
		return nil, fmt.Errorf("containerd config %s: [plugins.'%s']: %w", path, nriPluginID, err)
	}
	var section nriSection
	if _, err := toml.Decode(buf.String(), &section); err != nil {
		return nil, fmt.Errorf("containerd config %s: [plugins.'%s']: %w", path, nriPluginID, err)
	}
	out.Enabled = !disabled && !section.Disable
	out.SocketPath = section.SocketPath
	if t := section.PluginRequestTimeout; t != "" {
		d, err := time.ParseDuration(t)
		if err != nil {
			return nil, fmt.Errorf("containerd config: [plugins.'%s'] plugin_request_timeout %q: %w", nriPluginID, t, err)
		}
		out.RequestTimeout = d
	}
	v := section.DefaultValidatorConfig
	out.ValidatorEnabled = v.Enable
	out.RequiredPlugins = v.RequiredPlugins
	out.TolerateAnnotation = v.TolerateMissingAnnotation
	return out, nil
}

// MergeTables merges a later file's table into an earlier one as
// containerd's loader does: key by key, tables within tables too, any other
// value of the later file (a list included) replacing the earlier one. The
// result shares no table with dst but may share values with src.
func MergeTables(dst, src map[string]any) map[string]any {
	out := make(map[string]any, len(dst)+len(src))
	for k, v := range dst {
		if t, ok := v.(map[string]any); ok {
			v = MergeTables(nil, t)
		}
		out[k] = v
	}
	for k, v := range src {
		if t, ok := v.(map[string]any); ok {
			if d, ok := out[k].(map[string]any); ok {
				out[k] = MergeTables(d, t)
				continue
			}
			v = MergeTables(nil, t)
		}
		out[k] = v
	}
	return out
}

// ContainerdFile is one containerd config file as containerd reads it.
type ContainerdFile struct {
	Path    string // absolute, on the node
	Version int64
	Imports []string // as written
	Raw     map[string]any
}

// Plugin returns the file's table of the plugin id, nil when it has none.
func (f ContainerdFile) Plugin(id string) map[string]any {
	p, _ := f.Raw["plugins"].(map[string]any)
	t, _ := p[id].(map[string]any)
	return t
}

// ReadContainerdFiles reads containerd's config at the absolute path main and
// every file it imports, in containerd's order: the main file, then imports
// breadth first, each file once. fsys holds the node's /.
func ReadContainerdFiles(fsys fs.FS, main string) ([]ContainerdFile, error) {
	var (
		out     []ContainerdFile
		pending = []string{main}
		seen    = map[string]bool{}
	)
	for len(pending) > 0 {
		p := pending[0]
		pending = pending[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		if len(seen) > maxImports {
			return nil, fmt.Errorf("containerd config %s: more than %d imported files", main, maxImports)
		}
		data, err := readBounded(fsys, p)
		if err != nil {
			return nil, err
		}
		f, err := parseContainerdFile(p, data)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
		for _, imp := range f.Imports {
			matches, err := globImport(fsys, p, imp)
			if err != nil {
				return nil, fmt.Errorf("containerd config %s: import %q: %w", p, imp, err)
			}
			pending = append(pending, matches...)
		}
	}
	return out, nil
}

func parseContainerdFile(p string, data []byte) (ContainerdFile, error) {
	f := ContainerdFile{Path: p}
	if _, err := toml.Decode(string(data), &f.Raw); err != nil {
		return f, fmt.Errorf("containerd config %s: %w", p, err)
	}
	if v, ok := f.Raw["version"]; ok {
		n, ok := v.(int64)
		if !ok {
			return f, fmt.Errorf("containerd config %s: version is not a number", p)
		}
		f.Version = n
	}
	if v, ok := f.Raw["imports"]; ok {
		list, ok := v.([]any)
		if !ok {
			return f, fmt.Errorf("containerd config %s: imports is not a list", p)
		}
		for _, e := range list {
			s, ok := e.(string)
			if !ok {
				return f, fmt.Errorf("containerd config %s: imports holds a non-string", p)
			}
			f.Imports = append(f.Imports, s)
		}
	}
	return f, nil
}

// ImportPattern is an imports entry of the file at parent as containerd
// resolves it: cleaned, relative to the importing file's directory.
func ImportPattern(parent, imp string) string {
	imp = filepath.Clean(imp)
	if !filepath.IsAbs(imp) {
		imp = filepath.Join(filepath.Dir(parent), imp)
	}
	return imp
}

// globImport resolves one imports entry of the file at parent the way
// containerd does: relative to parent's directory, and a glob only when it
// holds a '*' (a plain path to a missing file stops containerd, and fails
// here too). The paths are absolute; fsys holds /.
func globImport(fsys fs.FS, parent, imp string) ([]string, error) {
	imp = ImportPattern(parent, imp)
	if !strings.Contains(imp, "*") {
		return []string{imp}, nil
	}
	matches, err := fs.Glob(fsys, strings.TrimPrefix(imp, "/"))
	if err != nil {
		return nil, err
	}
	for i, m := range matches {
		matches[i] = "/" + m
	}
	return matches, nil
}

func readBounded(fsys fs.FS, p string) ([]byte, error) {
	f, err := fsys.Open(strings.TrimPrefix(p, "/"))
	if err != nil {
		// The fs.FS path lacks the leading '/': name the file as the node does.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("read containerd config %s: %w", p, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxContainerdConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read containerd config %s: %w", p, err)
	}
	if len(data) > maxContainerdConfigBytes {
		return nil, fmt.Errorf("containerd config %s: larger than %d bytes", p, maxContainerdConfigBytes)
	}
	return data, nil
}
