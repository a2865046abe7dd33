package policy

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// LoadDir loads every *.yaml, *.yml, *.json (read as YAML, of which JSON is a subset) and
// *.toml file directly in dir, in name order. Names
// starting with '.' are skipped: a Kubernetes ConfigMap or Secret mount holds the real files
// under "..data" and exposes each key as a symlink through it, so following the visible
// symlinks reads each file exactly once. Subdirectories and other extensions are ignored.
// Errors name the file (and, for YAML, the document).
func LoadDir(dir string) ([]Policy, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read policy dir: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		switch strings.ToLower(filepath.Ext(e.Name())) {
		case ".yaml", ".yml", ".json", ".toml":
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	var out []Policy
	for _, name := range names {
		path := filepath.Join(dir, name)
		fi, err := os.Stat(path) // follows symlinks
		if err != nil {
			return nil, fmt.Errorf("policy file: %w", err)
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		data, err := readBounded(path)
		if err != nil {
			return nil, err
		}
		var ps []Policy
		if strings.EqualFold(filepath.Ext(name), ".toml") {
			ps, err = ParseTOML(data, path)
		} else {
			ps, err = ParseYAML(data, path)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ps...)
	}
	return out, nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("policy file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxPolicyFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read policy file %s: %w", path, err)
	}
	if len(data) > MaxPolicyFileBytes {
		return nil, fmt.Errorf("policy file %s: larger than %d bytes", path, MaxPolicyFileBytes)
	}
	return data, nil
}
