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
	"regexp"
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

// Bundle is one snapshot of node config, policies and trust stores.
type Bundle struct {
	Config   []byte
	Policies map[string][]byte // file name -> content
	// Truststores maps a signer name to its PEM bundle; installed as
	// /etc/pullguard/truststore/<signer>/<signer>.pem. Only used when
	// TruststoresManaged (the source has a trust store dir).
	Truststores        map[string][]byte
	TruststoresManaged bool
}

// Source says where a bundle is read from (the DaemonSet's ConfigMap mounts).
type Source struct {
	ConfigFile  string // config.toml
	PoliciesDir string // policy files; empty: none
	// TruststoreDir holds one <signer>.pem (or .crt) per signer; empty or
	// missing: trust stores are not managed by the DaemonSet.
	TruststoreDir string
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
	fmt.Fprintf(h, "\ntruststores managed=%t\n", b.TruststoresManaged)
	for _, name := range sortedKeys(b.Truststores) {
		fmt.Fprintf(h, "\ntruststore %q %d\n", name, len(b.Truststores[name]))
		h.Write(b.Truststores[name])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// PolicyNames returns the policy file names in sorted order.
func (b *Bundle) PolicyNames() []string { return sortedKeys(b.Policies) }

func sortedKeys(m map[string][]byte) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Read takes a snapshot of the source. Inside a ConfigMap volume every file
// is a symlink through ..data; reading through the resolved ..data directory
// once keeps the snapshot from straddling an update.
func Read(src Source) (*Bundle, error) {
	cfgDir := stableDir(filepath.Dir(src.ConfigFile))
	cfg, err := hoststate.ReadBounded(filepath.Join(cfgDir, filepath.Base(src.ConfigFile)), MaxFileBytes)
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", src.ConfigFile, err)
	}
	b := &Bundle{Config: cfg, Policies: map[string][]byte{}, Truststores: map[string][]byte{}}
	if src.PoliciesDir != "" {
		if b.Policies, err = readDir(src.PoliciesDir, policyExtensions, func(name string) string { return name }); err != nil {
			return nil, fmt.Errorf("read policies: %w", err)
		}
	}
	if src.TruststoreDir != "" {
		if _, err := os.Stat(src.TruststoreDir); err == nil {
			b.TruststoresManaged = true
			if b.Truststores, err = readDir(src.TruststoreDir, []string{".pem", ".crt"}, func(name string) string {
				return strings.TrimSuffix(name, filepath.Ext(name))
			}); err != nil {
				return nil, fmt.Errorf("read trust stores: %w", err)
			}
			for signer := range b.Truststores {
				if !signerNameRE.MatchString(signer) {
					return nil, fmt.Errorf("read trust stores: %q is not a valid signer name", signer)
				}
			}
		}
	}
	return b, nil
}

var signerNameRE = regexp.MustCompile(`^[a-zA-Z0-9_.-]+$`)

// readDir reads the regular files with one of exts, keyed by key(name).
func readDir(dir string, exts []string, key func(string) string) (map[string][]byte, error) {
	stable := stableDir(dir)
	entries, err := os.ReadDir(stable)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !slices.Contains(exts, strings.ToLower(filepath.Ext(name))) {
			continue
		}
		p := filepath.Join(stable, name)
		fi, err := os.Stat(p) // follows the ConfigMap's symlinks
		if err != nil {
			return nil, fmt.Errorf("stat %s: %w", p, err)
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		if len(out) >= MaxPolicyFiles {
			return nil, fmt.Errorf("more than %d files in %s", MaxPolicyFiles, dir)
		}
		k := key(name)
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("%s: two files for %q", dir, k)
		}
		data, err := hoststate.ReadBounded(p, MaxFileBytes)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", p, err)
		}
		out[k] = data
	}
	return out, nil
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

// WriteToHost installs the bundle under root: the policies (and managed
// trust stores) as directories that /etc/pullguard/policies (and
// /etc/pullguard/truststore), symlinks, are swapped to in one rename each,
// then config.toml via temp file and rename. The node's settings replace
// the ConfigMap's (the runtime endpoint and containerd's NRI side are facts
// of the node). It reports whether anything changed.
func (b *Bundle) WriteToHost(root hoststate.Root, node hoststate.Node) (bool, error) {
	cfg, err := b.NodeConfig(node)
	if err != nil {
		return false, err
	}
	confDir := root.Path(hoststate.ConfigDir)
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", confDir, err)
	}
	changed := false
	if b.managesTruststores(root) {
		files := map[string][]byte{}
		for signer, pem := range b.Truststores {
			files[signer+"/"+signer+".pem"] = pem
		}
		c, err := hoststate.SwapDir(root.Path(hoststate.TruststorePath), files)
		if err != nil {
			return false, fmt.Errorf("install trust stores: %w", err)
		}
		changed = changed || c
	}
	c, err := hoststate.SwapDir(root.Path(hoststate.PoliciesPath), b.Policies)
	if err != nil {
		return false, fmt.Errorf("install policies: %w", err)
	}
	changed = changed || c
	cfgPath := root.Path(hoststate.ConfigPath)
	old, err := os.ReadFile(cfgPath)
	if err == nil && string(old) == string(cfg) {
		return changed, nil
	}
	if err := hoststate.WriteFileAtomic(cfgPath, cfg, 0o644); err != nil {
		return false, fmt.Errorf("install config: %w", err)
	}
	return true, nil
}

// NodeConfig is the bundle's config.toml with the node's settings in it, as
// WriteToHost writes it.
func (b *Bundle) NodeConfig(node hoststate.Node) ([]byte, error) {
	cfg, err := hoststate.SetNode(b.Config, node)
	if err != nil {
		return nil, fmt.Errorf("set the node's settings in config.toml: %w", err)
	}
	return cfg, nil
}

// managesTruststores says whether the bundle owns /etc/pullguard/truststore
// on this host. Certificates provisioned there by hand (a real directory,
// not our symlink) stay until the ConfigMap names at least one signer.
func (b *Bundle) managesTruststores(root hoststate.Root) bool {
	if !b.TruststoresManaged {
		return false
	}
	if len(b.Truststores) > 0 {
		return true
	}
	fi, err := os.Lstat(root.Path(hoststate.TruststorePath))
	return !(err == nil && fi.IsDir())
}
