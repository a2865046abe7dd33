package bundle

import (
	"fmt"
	"os"
	"path"
	"path/filepath"

	"github.com/pullguard/pullguard/config"
	"github.com/pullguard/pullguard/daemonset/hoststate"
)

// Validate checks the bundle as the daemon on the host would load it: the
// config (with the node's upstream substituted when upstream is not empty)
// parsed strictly and validated, with its files (trust stores, CA files...)
// looked up under root and its policy directory replaced by the bundle's own
// policies. Nothing is written under root.
func (b *Bundle) Validate(root hoststate.Root, upstream string) error {
	data := b.Config
	if upstream != "" {
		var err error
		if data, err = hoststate.SetUpstream(data, upstream); err != nil {
			return err
		}
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
	if c.Policy.Dir != "" {
		tmp, err := os.MkdirTemp("", "pullguard-policies-")
		if err != nil {
			return fmt.Errorf("stage policies for validation: %w", err)
		}
		defer os.RemoveAll(tmp)
		for _, name := range b.PolicyNames() {
			if err := os.WriteFile(filepath.Join(tmp, name), b.Policies[name], 0o600); err != nil {
				return fmt.Errorf("stage policy %s: %w", name, err)
			}
		}
		rooted.Policy.Dir = tmp
	}
	if err := rooted.Validate(); err != nil {
		return err
	}
	return nil
}
