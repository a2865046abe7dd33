package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/reference"

	"github.com/pullguard/pullguard/plugin/policy"
	"github.com/pullguard/pullguard/plugin/trust"
)

// maxSocketPath is the longest unix socket path the kernel accepts (sun_path is 108 bytes
// including the terminating NUL).
const maxSocketPath = 107

// signerNameRE is what notation accepts as a trust store name, and signer names become
// trust store names.
var signerNameRE = regexp.MustCompile(`^[a-zA-Z0-9_.-]+$`)

// nriNameRE is what NRI accepts as a plugin name.
var nriNameRE = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

// Validate checks the config's meaning: values in range, paths absolute, the trust stores
// present and holding certificates, signer names unique, every signer a policy names
// defined, and the policies themselves (inline and in [policy].dir). All problems are
// reported together, one per line.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	// [server]
	s := c.Server
	switch {
	case s.Socket == "":
		add("[server] socket is required")
	case !filepath.IsAbs(s.Socket):
		add("[server] socket %q: must be an absolute path", s.Socket)
	case len(s.Socket) > maxSocketPath:
		add("[server] socket %q: %d bytes, longer than the %d a unix socket path may have", s.Socket, len(s.Socket), maxSocketPath)
	}
	switch {
	case s.AdminSocket == "" || !filepath.IsAbs(s.AdminSocket):
		add("[server] admin_socket %q: must be an absolute path", s.AdminSocket)
	case len(s.AdminSocket) > maxSocketPath:
		add("[server] admin_socket %q: longer than %d bytes", s.AdminSocket, maxSocketPath)
	case filepath.Clean(s.AdminSocket) == filepath.Clean(s.Socket):
		add("[server] admin_socket %q is the CRI socket", s.AdminSocket)
	}
	if m, err := parseMode(s.SocketMode); err != nil {
		add("[server] %v", err)
	} else if m&0o007 != 0 {
		add("[server] socket_mode %q gives other users access to the container runtime; use e.g. \"0660\" and socket_group", s.SocketMode)
	}
	up := s.UpstreamPath()
	switch {
	case s.Upstream == "":
		add("[server] upstream is required")
	case strings.Contains(s.Upstream, "://") && !strings.HasPrefix(s.Upstream, unixScheme):
		add("[server] upstream %q: only unix sockets are supported (unix:///path or /path)", s.Upstream)
	case !filepath.IsAbs(up):
		add("[server] upstream %q: the socket path must be absolute", s.Upstream)
	case len(up) > maxSocketPath:
		add("[server] upstream %q: socket path longer than %d bytes", s.Upstream, maxSocketPath)
	case filepath.Clean(up) == filepath.Clean(s.Socket):
		add("[server] upstream %q is pullguard's own socket: calls would loop", s.Upstream)
	}
	if s.MaxMessageBytes < 4<<10 || s.MaxMessageBytes > 256<<20 {
		add("[server] max_message_bytes %d: want between 4096 and 268435456", s.MaxMessageBytes)
	}
	checkDuration(add, "[server] shutdown_timeout", s.ShutdownTimeout, 10*time.Minute)
	if s.StateDir == "" || !filepath.IsAbs(s.StateDir) {
		add("[server] state_dir %q: must be an absolute path", s.StateDir)
	}
	if s.UpstreamNamespace == "" {
		add("[server] upstream_namespace is required (CRI uses \"k8s.io\")")
	}

	// [log], [metrics], [decision], [policy]
	if !oneOf(c.Log.Level, "debug", "info", "warn", "error") {
		add("[log] level %q: want debug, info, warn or error", c.Log.Level)
	}
	if !oneOf(c.Log.Format, "json", "text") {
		add("[log] format %q: want json or text", c.Log.Format)
	}
	if a := c.Metrics.Address; a != "" {
		if _, port, err := net.SplitHostPort(a); err != nil {
			add("[metrics] address %q: want host:port, e.g. \"127.0.0.1:9464\"", a)
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			add("[metrics] address %q: invalid port", a)
		}
	}
	checkDuration(add, "[decision] timeout", c.Decision.Timeout, 10*time.Minute)
	if c.Policy.DefaultMode == "" || policy.ValidateMode(policy.Mode(c.Policy.DefaultMode)) != nil {
		add("[policy] default_mode %q: want enforce or audit", c.Policy.DefaultMode)
	}

	// [nri]
	n := c.NRI
	switch n.Mode {
	case NRIEnforce:
		switch {
		case n.Socket == "" || !filepath.IsAbs(n.Socket):
			add("[nri] socket %q: must be an absolute path (containerd's NRI socket_path)", n.Socket)
		case len(n.Socket) > maxSocketPath:
			add("[nri] socket %q: longer than %d bytes", n.Socket, maxSocketPath)
		}
		if !nriNameRE.MatchString(n.PluginName) {
			add("[nri] plugin_name %q: want letters, digits, '-' and '_'", n.PluginName)
		}
		if len(n.PluginIndex) != 2 || strings.Trim(n.PluginIndex, "0123456789") != "" {
			add("[nri] plugin_index %q: want two digits, e.g. \"10\"", n.PluginIndex)
		}
		checkDuration(add, "[nri] timeout", n.Timeout, 30*time.Second)
		if n.ImageVolumeDir != "" && !filepath.IsAbs(n.ImageVolumeDir) {
			add("[nri] image_volume_dir %q: must be an absolute path", n.ImageVolumeDir)
		}
		if n.SandboxImage != "" {
			if _, err := reference.ParseNormalizedNamed(n.SandboxImage); err != nil {
				add("[nri] sandbox_image %q: %v", n.SandboxImage, err)
			}
		}
	case NRIPullOnly:
	default:
		add("[nri] mode %q: want enforce or pull-only", n.Mode)
	}

	// [running]
	checkDuration(add, "[running] recheck_interval", c.Running.RecheckInterval, 0)
	if c.Running.RecheckInterval.Duration > 0 && c.Running.RecheckInterval.Duration < time.Second {
		add("[running] recheck_interval %s: at least 1s (every running image is verified again each time)", c.Running.RecheckInterval.Duration)
	}
	if c.Running.RecheckConcurrency < 1 || c.Running.RecheckConcurrency > 64 {
		add("[running] recheck_concurrency %d: want 1 to 64", c.Running.RecheckConcurrency)
	}
	if c.Running.MaxEvictionsPerMinute < 0 || c.Running.MaxEvictionsPerMinute > 1000 {
		add("[running] max_evictions_per_minute %d: want 0 (never evict) to 1000", c.Running.MaxEvictionsPerMinute)
	}

	// [[signers]]
	signers := map[string]bool{}
	for i, sg := range c.Signers {
		where := fmt.Sprintf("[[signers]] #%d %q", i+1, sg.Name)
		switch {
		case sg.Name == "":
			add("[[signers]] #%d: name is required", i+1)
		case !signerNameRE.MatchString(sg.Name):
			add("%s: name may only hold letters, digits, '.', '_' and '-'", where)
		case signers[sg.Name]:
			add("%s: duplicate signer name", where)
		}
		signers[sg.Name] = true
		if sg.TrustStore == "" {
			add("%s: trust_store is required", where)
		} else if err := checkCertDir(sg.TrustStore, trust.LoadTrustStore); err != nil {
			add("%s: trust_store: %v", where, err)
		}
		if sg.TimestampStore != "" {
			if err := checkCertDir(sg.TimestampStore, trust.LoadTimestampStore); err != nil {
				add("%s: timestamp_store: %v", where, err)
			}
		}
		if err := checkIdentities(sg.Identities); err != nil {
			add("%s: identities: %v", where, err)
		}
		if !oneOf(sg.Revocation, RevocationStrict, RevocationPermissive, RevocationSkip) {
			add("%s: revocation %q: want strict, permissive or skip", where, sg.Revocation)
		}
	}

	// [va]
	v := c.VA
	if err := policy.ValidateSeverity(v.MaxSeverity); err != nil {
		add("[va] max_severity: %v", err)
	}
	if err := policy.ValidateSeverity(v.UnknownSeverity); err != nil || v.UnknownSeverity == "none" {
		add("[va] unknown_severity %q: want low, medium, high or critical", v.UnknownSeverity)
	}
	if err := policy.ValidateUnscanned(v.Unscanned); err != nil {
		add("[va] unscanned: %v", err)
	}
	checkDuration(add, "[va] max_report_age", v.MaxReportAge, 0)
	if v.MaxReportBytes <= 0 || v.MaxReportBytes > 256<<20 {
		add("[va] max_report_bytes %d: want between 1 and 268435456", v.MaxReportBytes)
	}
	for _, n := range v.ScannerSigners {
		if !signers[n] {
			add("[va] scanner_signers: %q is not defined in [[signers]]", n)
		}
	}
	for i, e := range v.Allow {
		x, err := policy.ExemptionFromSpec(e)
		if err == nil {
			err = x.Validate()
		}
		if err != nil {
			add("[[va.allow]] #%d: %v", i+1, err)
		}
	}

	// [registry]
	r := c.Registry
	if r.HostsDir != "" {
		if err := checkDir(r.HostsDir); err != nil {
			add("[registry] hosts_dir: %v", err)
		}
	}
	for _, h := range r.PlainHTTP {
		if err := checkHost(h); err != nil {
			add("[registry] plain_http: %v", err)
		}
	}
	for _, h := range r.InsecureSkipVerify {
		if err := checkHost(h); err != nil {
			add("[registry] insecure_skip_verify: %v", err)
		}
	}
	if r.AuthFile != "" {
		if fi, err := os.Stat(r.AuthFile); err != nil {
			add("[registry] auth_file: %v", err)
		} else if fi.IsDir() {
			add("[registry] auth_file: %s is a directory, want a docker config.json", r.AuthFile)
		}
	}
	for _, f := range r.CAFiles {
		if fi, err := os.Stat(f); err != nil {
			add("[registry] ca_files: %v", err)
		} else if !fi.Mode().IsRegular() {
			add("[registry] ca_files: %s is not a regular file", f)
		}
	}
	checkDuration(add, "[registry] timeout", r.Timeout, 10*time.Minute)
	checkBound(add, "[registry] max_manifest_bytes", r.MaxManifestBytes, 64<<20)
	checkBound(add, "[registry] max_blob_bytes", r.MaxBlobBytes, 1<<30)
	checkBound(add, "[registry] max_signatures", int64(r.MaxSignatures), 1024)
	checkBound(add, "[registry] max_referrers", int64(r.MaxReferrers), 100000)

	// [cache]
	checkBound(add, "[cache] size", int64(c.Cache.Size), 10_000_000)
	checkDuration(add, "[cache] ttl", c.Cache.TTL, 0)
	checkDuration(add, "[cache] negative_ttl", c.Cache.NegativeTTL, 0)
	if c.Cache.NegativeTTL.Duration > c.Cache.TTL.Duration {
		add("[cache] negative_ttl %s: longer than ttl %s", c.Cache.NegativeTTL.Duration, c.Cache.TTL.Duration)
	}
	if c.Cache.File != "" && !filepath.IsAbs(c.Cache.File) {
		add("[cache] file %q: must be an absolute path", c.Cache.File)
	}

	// Policies: each valid, every signer they name defined.
	policies, err := c.Policies()
	if err != nil {
		errs = append(errs, err)
	} else {
		for i := range policies {
			p := &policies[i]
			for _, rule := range p.Rules {
				for _, n := range rule.Checks.Trust.Signers {
					if !signers[n] {
						add("%s: repositories[%d] %q: trust signer %q is not defined in [[signers]]", p, rule.Index, rule.Name, n)
					}
				}
			}
		}
		if _, err := policy.NewSet(policies, policy.Mode(c.Policy.DefaultMode)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func oneOf(v string, allowed ...string) bool {
	for _, a := range allowed {
		if v == a {
			return true
		}
	}
	return false
}

// checkDuration wants a positive duration, at most max when max > 0.
func checkDuration(add func(string, ...any), name string, d Duration, max time.Duration) {
	switch {
	case d.Duration <= 0:
		add("%s %s: must be positive", name, d.Duration)
	case max > 0 && d.Duration > max:
		add("%s %s: longer than the %s allowed", name, d.Duration, max)
	}
}

func checkBound(add func(string, ...any), name string, v, max int64) {
	if v <= 0 || v > max {
		add("%s %d: want between 1 and %d", name, v, max)
	}
}

func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	return nil
}

// checkCertDir loads a certificate store with the loader verification uses.
func checkCertDir(dir string, load func(string) ([]*x509.Certificate, error)) error {
	if err := checkDir(dir); err != nil {
		return err
	}
	_, err := load(dir)
	return err
}

// checkIdentities applies notation's own rules (plugin/trust), so a config
// that validates is one whose signers load: "*" alone, or "x509.subject: <DN>"
// with at least C, ST and O.
func checkIdentities(ids []string) error {
	if len(ids) == 0 {
		return errors.New(`at least one is required ("x509.subject: C=…, ST=…, O=…, CN=…" or "*")`)
	}
	return trust.CheckIdentities(ids)
}

// checkHost wants a registry host as in image names: host or host:port, nothing else.
func checkHost(h string) error {
	if h == "" || strings.ContainsAny(h, "/ \t") {
		return fmt.Errorf("%q: want a registry host like \"registry.example.com\" or \"127.0.0.1:5000\"", h)
	}
	if strings.Contains(h, ":") {
		if _, port, err := net.SplitHostPort(h); err != nil || port == "" {
			return fmt.Errorf("%q: invalid host:port", h)
		}
	}
	return nil
}
