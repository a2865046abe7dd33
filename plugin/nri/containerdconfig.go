package nri

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/BurntSushi/toml"
)

// nriPluginID is NRI's section in containerd's config (versions 2 to 4).
const nriPluginID = "io.containerd.nri.v1.nri"

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
// the way containerd merges them: a plugin's section in a later file
// replaces that section of earlier ones.
func ReadContainerdNRI(path string) (*ContainerdNRI, error) {
	type file struct {
		Imports         []string                  `toml:"imports"`
		DisabledPlugins []string                  `toml:"disabled_plugins"`
		Plugins         map[string]toml.Primitive `toml:"plugins"`
	}
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
	out := &ContainerdNRI{}
	var (
		section  *nriSection
		disabled bool
		pending  = []string{path}
		seen     = map[string]bool{}
	)
	for len(pending) > 0 {
		p := pending[0]
		pending = pending[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		if len(seen) > maxImports {
			return nil, fmt.Errorf("containerd config %s: more than %d imported files", path, maxImports)
		}
		data, err := readBounded(p)
		if err != nil {
			return nil, err
		}
		var f file
		md, err := toml.Decode(string(data), &f)
		if err != nil {
			return nil, fmt.Errorf("containerd config %s: %w", p, err)
		}
		out.Files = append(out.Files, p)
		if slices.Contains(f.DisabledPlugins, nriPluginID) {
			disabled = true
		}
		if prim, ok := f.Plugins[nriPluginID]; ok {
			var s nriSection
			if err := md.PrimitiveDecode(prim, &s); err != nil {
				return nil, fmt.Errorf("containerd config %s: [plugins.'%s']: %w", p, nriPluginID, err)
			}
			section = &s
		}
		for _, imp := range f.Imports {
			if !filepath.IsAbs(imp) {
				imp = filepath.Join(filepath.Dir(p), imp)
			}
			matches, err := filepath.Glob(imp)
			if err != nil {
				return nil, fmt.Errorf("containerd config %s: import %q: %w", p, imp, err)
			}
			pending = append(pending, matches...)
		}
	}
	if section == nil {
		// containerd 2.x enables NRI by default, with the validator off.
		out.Enabled = !disabled
		return out, nil
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

func readBounded(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("read containerd config: %w", err)
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
