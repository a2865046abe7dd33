package config

import (
	"fmt"
	"net"
	"time"

	"github.com/pullguard/pullguard/plugin/policy"
)

// Warnings lists settings that are valid but probably not what the operator wants: checks
// that can never pass with the signers configured, TLS switched off, an exposed metrics
// port, audit by default, policy fields accepted for compatibility but not acted on
// (Policy.Warnings). cmd/pullguard logs them at load and validate-config prints them.
// Policies that fail to load are left to Validate.
func (c *Config) Warnings() []string {
	var out []string
	if c.Policy.DefaultMode == string(policy.ModeAudit) {
		out = append(out, "[policy] default_mode is audit: nothing is denied unless a policy or entry sets mode = \"enforce\"")
	}
	if c.NRI.Mode == NRIPullOnly {
		out = append(out, "[nri] mode is pull-only: only pulls through pullguard are decided; images already on the node, loaded with ctr, re-tagged on the node, pulled for one namespace and started in another, image volumes and the sandbox image start UNCHECKED")
	}
	if c.NRI.Mode == NRIEnforce && c.NRI.ContainerdConfig == "" {
		out = append(out, "[nri] containerd_config is empty: pullguard cannot check that containerd requires it; if containerd's default validator does not list it in required_plugins, containers start while pullguard is down")
	}
	if d := c.Running.RecheckInterval.Duration; d > 0 && d < time.Minute {
		out = append(out, fmt.Sprintf("[running] recheck_interval %s: every running image is verified against its registry that often", d))
	}
	if len(c.Registry.PlainHTTP) > 0 {
		out = append(out, fmt.Sprintf("[registry] plain_http %q: these registries are reached without TLS (testing only)", c.Registry.PlainHTTP))
	}
	if len(c.Registry.InsecureSkipVerify) > 0 {
		out = append(out, fmt.Sprintf("[registry] insecure_skip_verify %q: these registries' certificates are not verified (testing only)", c.Registry.InsecureSkipVerify))
	}
	if a := c.Metrics.Address; a != "" {
		if host, _, err := net.SplitHostPort(a); err == nil {
			if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
				out = append(out, fmt.Sprintf("[metrics] address %q is reachable from outside the node", a))
			}
		}
	}
	policies, err := c.Policies()
	if err != nil {
		return out
	}
	for i := range policies {
		p := &policies[i]
		for _, w := range p.Warnings {
			out = append(out, fmt.Sprintf("%s: %s", p, w))
		}
		for _, r := range p.Rules {
			if r.Checks.Trust.Enabled && len(c.Signers) == 0 {
				out = append(out, fmt.Sprintf("%s: repositories[%d] %q requires trust but no [[signers]] are configured: every image it matches is denied", p, r.Index, r.Name))
			}
			va := r.Checks.VA
			signed := c.VA.RequireSignedReport
			if va.RequireSignedReport != nil {
				signed = *va.RequireSignedReport
			}
			if va.Enabled && signed && len(c.VA.ScannerSigners) == 0 {
				out = append(out, fmt.Sprintf("%s: repositories[%d] %q requires a signed scan report but [va] scanner_signers is empty: every scanned image it matches is denied", p, r.Index, r.Name))
			}
		}
	}
	return out
}
