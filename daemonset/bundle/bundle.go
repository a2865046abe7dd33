// Package bundle is the unit pullguard's DaemonSet moves from a ConfigMap
// mount to a node: one config.toml plus a directory of policy files. It reads
// a consistent snapshot of the source (ConfigMap volumes swap a ..data
// symlink) and writes it to the host so the running daemon never sees half of
// an update.
package bundle

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pullguard/pullguard/daemonset/hoststate"
)

// Bounds on what a ConfigMap can make us read (a ConfigMap is at most 1 MiB).
const (
	MaxFileBytes   = 1 << 20
	MaxPolicyFiles = 256
)

// policyExtensions are the policy files copied to the host: what
// policy.LoadDir reads.
var policyExtensions = []string{".yaml", ".yml", ".toml"}

// Bundle is one snapshot of node config and policies.
type Bundle struct {
	Config   []byte
	Policies map[string][]byte // file name -> content
}

// Hash identifies the content, independent of where it was read from.
func (b *Bundle) Hash() string {
	h := sha256.New()
	fmt.Fprintf(h, "config %d\n", len(b.Config))
	h.Write(b.Config)
	for _, name := range b.PolicyNames() {
		fmt.Fprintf(h, "\npolicy %q %d\n", name, len(b.Policies[name]))
		h.Write(b.Policies[name])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// PolicyNames returns the policy file names in sorted order.
func (b *Bundle) PolicyNames() []string {
	names := make([]string, 0, len(b.Policies))
	for n := range b.Policies {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Read takes a snapshot of configFile and the policy files in policiesDir
// (empty: no policies). Inside a ConfigMap volume every file is a symlink
// through ..data; reading through the resolved ..data directory once keeps
// the snapshot from straddling an update.
func Read(configFile, policiesDir string) (*Bundle, error) {
	cfgDir := stableDir(filepath.Dir(configFile))
	cfg, err := hoststate.ReadBounded(filepath.Join(cfgDir, filepath.Base(configFile)), MaxFileBytes)
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", configFile, err)
	}
	b := &Bundle{Config: cfg, Policies: map[string][]byte{}}
	if policiesDir == "" {
		return b, nil
	}
	dir := stableDir(policiesDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read policies dir %s: %w", policiesDir, err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !slices.Contains(policyExtensions, strings.ToLower(filepath.Ext(name))) {
			continue
		}
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p) // follows the ConfigMap's symlinks
		if err != nil {
			return nil, fmt.Errorf("stat policy %s: %w", p, err)
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		if len(b.Policies) >= MaxPolicyFiles {
			return nil, fmt.Errorf("read policies dir %s: more than %d policy files", policiesDir, MaxPolicyFiles)
		}
		data, err := hoststate.ReadBounded(p, MaxFileBytes)
		if err != nil {
			return nil, fmt.Errorf("read policy %s: %w", p, err)
		}
		b.Policies[name] = data
	}
	return b, nil
}

// stableDir resolves a ConfigMap volume's ..data link when there is one.
func stableDir(dir string) string {
	data := filepath.Join(dir, "..data")
	if fi, err := os.Lstat(data); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		if resolved, err := filepath.EvalSymlinks(data); err == nil {
			return resolved
		}
	}
	return dir
}

// policiesPrefix names the content-addressed policy dirs next to the
// policies symlink.
const policiesPrefix = ".policies-"

// WriteToHost installs the bundle under root: the policies as a directory
// that /etc/pullguard/policies (a symlink) is swapped to in one rename, then
// config.toml via temp file and rename. When upstream is not empty it
// replaces [server].upstream (the node's runtime endpoint is a fact of the
// node, not of the ConfigMap). It reports whether anything changed.
func (b *Bundle) WriteToHost(root hoststate.Root, upstream string) (bool, error) {
	cfg := b.Config
	if upstream != "" {
		var err error
		if cfg, err = hoststate.SetUpstream(cfg, upstream); err != nil {
			return false, fmt.Errorf("set upstream in config: %w", err)
		}
	}
	confDir := root.Path(hoststate.ConfigDir)
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", confDir, err)
	}
	policiesChanged, err := b.writePolicies(confDir)
	if err != nil {
		return false, err
	}
	cfgPath := root.Path(hoststate.ConfigPath)
	old, err := os.ReadFile(cfgPath)
	if err == nil && string(old) == string(cfg) {
		return policiesChanged, nil
	}
	if err := hoststate.WriteFileAtomic(cfgPath, cfg, 0o644); err != nil {
		return false, fmt.Errorf("install config: %w", err)
	}
	return true, nil
}

func (b *Bundle) writePolicies(confDir string) (bool, error) {
	h := sha256.New()
	for _, name := range b.PolicyNames() {
		fmt.Fprintf(h, "%q %d\n", name, len(b.Policies[name]))
		h.Write(b.Policies[name])
	}
	target := policiesPrefix + hex.EncodeToString(h.Sum(nil))[:16]
	link := filepath.Join(confDir, filepath.Base(hoststate.PoliciesPath))
	if cur, err := os.Readlink(link); err == nil && cur == target {
		if _, err := os.Stat(filepath.Join(confDir, target)); err == nil {
			return false, nil
		}
	}
	dir := filepath.Join(confDir, target)
	if err := os.RemoveAll(dir); err != nil {
		return false, fmt.Errorf("clear %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", dir, err)
	}
	for _, name := range b.PolicyNames() {
		if err := os.WriteFile(filepath.Join(dir, name), b.Policies[name], 0o644); err != nil {
			return false, fmt.Errorf("write policy %s: %w", name, err)
		}
	}
	// A real directory at the link's place (written by hand or by an older
	// installer) cannot be replaced by rename; move it aside once.
	if fi, err := os.Lstat(link); err == nil && fi.IsDir() {
		if err := os.Rename(link, filepath.Join(confDir, policiesPrefix+"previous")); err != nil {
			return false, fmt.Errorf("move aside %s: %w", link, err)
		}
	}
	tmp := link + ".tmp"
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return false, fmt.Errorf("link policies: %w", err)
	}
	if err := os.Rename(tmp, link); err != nil {
		return false, fmt.Errorf("swap policies link: %w", err)
	}
	// Old snapshots are garbage now; failing to delete them is harmless.
	if entries, err := os.ReadDir(confDir); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), policiesPrefix) && e.Name() != target && e.Name() != policiesPrefix+"previous" {
				_ = os.RemoveAll(filepath.Join(confDir, e.Name()))
			}
		}
	}
	return true, nil
}
