package bundle

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/pullguard/pullguard/config"
	"github.com/pullguard/pullguard/daemonset/hoststate"
)

// Validate checks the bundle as the daemon on the host would load it: the
// config (with the node's settings substituted) parsed strictly and validated, with its files (trust stores, CA files...)
// looked up under root and its policy directory replaced by the bundle's own
// policies. Nothing is written under root.
func (b *Bundle) Validate(root hoststate.Root, node hoststate.Node) error {
	data, err := b.NodeConfig(node)
	if err != nil {
		return err
	}
	c, err := config.Parse(data, "config.toml")
	if err != nil {
		return err
	}
	if len(b.Policies) > 0 && c.Policy.Dir != "" && path.Clean(c.Policy.Dir) != hoststate.PoliciesPath {
		return fmt.Errorf("config.toml: [policy] dir is %q but the DaemonSet installs its policies in %s; set dir = %q",
			c.Policy.Dir, hoststate.PoliciesPath, hoststate.PoliciesPath)
	}
	if len(b.Policies) > 0 && c.Policy.Dir == "" {
		return fmt.Errorf("config.toml: [policy] dir is empty, so the %d policy files from the ConfigMap would be ignored; set dir = %q",
			len(b.Policies), hoststate.PoliciesPath)
	}
	rooted := c.WithRoot(string(root))
	tmp, err := os.MkdirTemp("", "pullguard-validate-")
	if err != nil {
		return fmt.Errorf("stage bundle for validation: %w", err)
	}
	defer os.RemoveAll(tmp)
	if c.Policy.Dir != "" {
		dir := filepath.Join(tmp, "policies")
		if err := os.Mkdir(dir, 0o700); err != nil {
			return fmt.Errorf("stage policies: %w", err)
		}
		for _, name := range b.PolicyNames() {
			if err := os.WriteFile(filepath.Join(dir, name), b.Policies[name], 0o600); err != nil {
				return fmt.Errorf("stage policy %s: %w", name, err)
			}
		}
		rooted.Policy.Dir = dir
	}
	if b.managesTruststores(root) {
		// Trust stores the bundle will install are checked as staged, so
		// a signer whose certificate is being removed fails validation now.
		stores := filepath.Join(tmp, "truststore")
		for signer, pem := range b.Truststores {
			d := filepath.Join(stores, signer)
			if err := os.MkdirAll(d, 0o700); err != nil {
				return fmt.Errorf("stage trust store %s: %w", signer, err)
			}
			if err := os.WriteFile(filepath.Join(d, signer+".pem"), pem, 0o600); err != nil {
				return fmt.Errorf("stage trust store %s: %w", signer, err)
			}
		}
		for i, sg := range c.Signers {
			for _, pair := range []struct {
				orig string
				dst  *string
			}{
				{sg.TrustStore, &rooted.Signers[i].TrustStore},
				{sg.TimestampStore, &rooted.Signers[i].TimestampStore},
			} {
				if rest, ok := strings.CutPrefix(path.Clean(pair.orig), hoststate.TruststorePath+"/"); ok {
					*pair.dst = filepath.Join(stores, filepath.FromSlash(rest))
				}
			}
		}
	}
	if err := rooted.Validate(); err != nil {
		return err
	}
	return nil
}
