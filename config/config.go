// Package config is pullguard's node configuration: the TOML schema, its documented
// defaults, loading (unknown keys are errors) and validation. It describes settings only;
// the packages that act on them (proxy, enforce, trust, va, registry, cache) receive plain
// values from cmd/pullguard.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/pullguard/pullguard/plugin/policy"
	"github.com/pullguard/pullguard/plugin/policy/v1beta1"
)

// Config is one node config file.
type Config struct {
	Server   Server   `toml:"server"`
	Log      Log      `toml:"log"`
	Metrics  Metrics  `toml:"metrics"`
	Decision Decision `toml:"decision"`
	Policy   Policy   `toml:"policy"`
	// Inline are the [[policies]] tables; Policies() turns them (and the policy directory)
	// into the policy model.
	Inline   []policy.TOMLPolicy `toml:"policies"`
	Signers  []Signer            `toml:"signers"`
	VA       VA                  `toml:"va"`
	Registry Registry            `toml:"registry"`
	Cache    Cache               `toml:"cache"`
	NRI      NRI                 `toml:"nri"`
	Running  Running             `toml:"running"`

	// Source is the file the config came from ("" when parsed from bytes without a name).
	Source string `toml:"-"`
}

// Server is [server]: the listening socket and the upstream runtime.
type Server struct {
	Socket            string   `toml:"socket"`
	SocketMode        string   `toml:"socket_mode"`  // octal, e.g. "0660"
	SocketGroup       string   `toml:"socket_group"` // group name or numeric gid; "" keeps the process's group
	Upstream          string   `toml:"upstream"`     // "unix:///path" or "/path"
	MaxMessageBytes   int      `toml:"max_message_bytes"`
	ShutdownTimeout   Duration `toml:"shutdown_timeout"`
	StateDir          string   `toml:"state_dir"`
	UpstreamNamespace string   `toml:"upstream_namespace"`
	// AdminSocket serves /readyz, /healthz, /metrics and the running-workload status to local
	// root (mode 0600): what the installer waits on and `pullguard status` reads.
	AdminSocket string `toml:"admin_socket"`
}

// SocketFileMode is SocketMode parsed; Validate has checked it, an invalid value yields 0660.
func (s Server) SocketFileMode() os.FileMode {
	m, err := parseMode(s.SocketMode)
	if err != nil {
		return 0o660
	}
	return m
}

// UpstreamPath is the filesystem path of the upstream socket, without the unix:// scheme.
func (s Server) UpstreamPath() string {
	if len(s.Upstream) > len(unixScheme) && s.Upstream[:len(unixScheme)] == unixScheme {
		return s.Upstream[len(unixScheme):]
	}
	return s.Upstream
}

const unixScheme = "unix://"

func parseMode(s string) (os.FileMode, error) {
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o777 {
		return 0, fmt.Errorf("invalid socket_mode %q: want an octal permission like \"0660\"", s)
	}
	return os.FileMode(v), nil
}

// Log is [log].
type Log struct {
	Level  string `toml:"level"`  // debug|info|warn|error
	Format string `toml:"format"` // json|text
}

// Metrics is [metrics].
type Metrics struct {
	// Address serves /metrics, /healthz and /readyz; "" disables them.
	Address string `toml:"address"`
}

// Decision is [decision].
type Decision struct {
	Timeout Duration `toml:"timeout"` // bound on one decision, registry calls included
}

// Policy is [policy].
type Policy struct {
	Dir string `toml:"dir"` // YAML/TOML policy files; "" = inline policies only
	// SyncedDir is where the policy-sync agent renders the cluster's ImagePolicy and
	// ClusterImagePolicy objects (daemonset/policysync); "" = none. A missing directory is an
	// empty set: the agent creates it on its first sync.
	SyncedDir   string `toml:"synced_dir"`
	DefaultMode string `toml:"default_mode"` // enforce|audit
}

// Signer is one [[signers]] entry: a name policies refer to, the certificates that anchor it
// and the identities accepted from them.
type Signer struct {
	Name           string   `toml:"name"`
	TrustStore     string   `toml:"trust_store"`     // directory of X.509 certificates (PEM or DER)
	Identities     []string `toml:"identities"`      // "x509.subject: CN=…,O=…" entries, or ["*"]
	TimestampStore string   `toml:"timestamp_store"` // optional directory of TSA root certificates
	Revocation     string   `toml:"revocation"`      // strict (default)|permissive|skip
}

// Revocation modes for signers.
const (
	RevocationStrict     = "strict"
	RevocationPermissive = "permissive"
	RevocationSkip       = "skip"
)

// VA is [va]: node-wide vulnerability assessment defaults; policy entries may override the
// knobs.
type VA struct {
	MaxSeverity         string   `toml:"max_severity"`
	IgnoreUnfixed       bool     `toml:"ignore_unfixed"`
	Unscanned           string   `toml:"unscanned"`
	MaxReportAge        Duration `toml:"max_report_age"`
	RequireSignedReport bool     `toml:"require_signed_report"`
	ScannerSigners      []string `toml:"scanner_signers"`
	MaxReportBytes      int64    `toml:"max_report_bytes"`
	UnknownSeverity     string   `toml:"unknown_severity"`
	// Allow has the schema of a policy's va.allow entries.
	Allow []v1beta1.Exemption `toml:"allow"`
}

// Exemptions returns the node-wide allowlist in the policy model. Decoding checked every
// expiry, so an error means the config was built in code with a bad one.
func (v VA) Exemptions() ([]policy.Exemption, error) {
	out := make([]policy.Exemption, len(v.Allow))
	for i, e := range v.Allow {
		x, err := policy.ExemptionFromSpec(e)
		if err != nil {
			return nil, fmt.Errorf("[[va.allow]] #%d: %w", i+1, err)
		}
		out[i] = x
	}
	return out, nil
}

// Registry is [registry].
type Registry struct {
	HostsDir           string   `toml:"hosts_dir"`
	PlainHTTP          []string `toml:"plain_http"`
	InsecureSkipVerify []string `toml:"insecure_skip_verify"`
	CAFiles            []string `toml:"ca_files"`
	Timeout            Duration `toml:"timeout"`
	MaxManifestBytes   int64    `toml:"max_manifest_bytes"`
	MaxBlobBytes       int64    `toml:"max_blob_bytes"`
	MaxSignatures      int      `toml:"max_signatures"`
	MaxReferrers       int      `toml:"max_referrers"`
	// AuthFile is a docker config.json (e.g. a mounted kubernetes.io/dockerconfigjson
	// Secret) whose credentials are used when a request carries none for a registry:
	// create-time verification of images never pulled through pullguard, and pulls
	// without imagePullSecrets. "" = none.
	AuthFile string `toml:"auth_file"`
}

// NRI is [nri]: pullguard's gate inside containerd, the NRI plugin that containerd's default
// validator requires for every container it creates.
type NRI struct {
	// Mode is "enforce" (the default: creates are decided inside containerd, and serve refuses
	// to start unless containerd requires pullguard) or "pull-only" (runtimes without NRI
	// validation: only pulls are decided, and containers of images already on the node, or
	// pulled around pullguard, start unchecked).
	Mode string `toml:"mode"`
	// Socket is containerd's NRI socket.
	Socket      string `toml:"socket"`
	PluginName  string `toml:"plugin_name"`
	PluginIndex string `toml:"plugin_index"`
	// Timeout bounds one answer to containerd; it must stay well under containerd's
	// plugin_request_timeout, or containerd drops the plugin and refuses every create until it
	// is back.
	Timeout Duration `toml:"timeout"`
	// ContainerdConfig is containerd's config file, read at start to check that NRI is on and
	// its default validator requires this plugin ("" skips the check, with a warning).
	ContainerdConfig string `toml:"containerd_config"`
	// SandboxImage is containerd's sandbox (pause) image (its pinned_images.sandbox), decided
	// under the cluster policy ahead of the pods. Images containerd labels as pinned are
	// decided too.
	SandboxImage string `toml:"sandbox_image"`
	// ImageVolumeDir is containerd CRI's image-volume directory; "" asks containerd (its CRI
	// status names its state directory).
	ImageVolumeDir string `toml:"image_volume_dir"`
}

// Running is [running]: containers already running are re-decided when policies, trust
// material or the facts about their images change; what happens to one no longer admitted is
// each policy's `running` (report or evict).
type Running struct {
	// RecheckInterval is how often the images of running containers are verified again against
	// their registries (a new scan report, a revoked signature).
	RecheckInterval Duration `toml:"recheck_interval"`
	// RecheckConcurrency bounds the re-checks made at once.
	RecheckConcurrency int `toml:"recheck_concurrency"`
	// MaxEvictionsPerMinute bounds the agent's evictions on this node.
	MaxEvictionsPerMinute int `toml:"max_evictions_per_minute"`
	// ProtectedNamespaces are never evicted: the namespaces whose images are admitted by
	// default, so the node can always recover.
	ProtectedNamespaces []string `toml:"protected_namespaces"`
}

// NRI modes.
const (
	NRIEnforce  = "enforce"
	NRIPullOnly = "pull-only"
)

// Cache is [cache]: the decision facts cache.
type Cache struct {
	Size int      `toml:"size"`
	TTL  Duration `toml:"ttl"`
	// NegativeTTL is how long "nothing verified" facts are kept (no valid signature found, no
	// scan report attached): short, so an image signed or scanned a moment after a denial is
	// admitted on the next try.
	NegativeTTL Duration `toml:"negative_ttl"`
	Persist     bool     `toml:"persist"` // keep facts across restarts in File
	File        string   `toml:"file"`    // "" = <server.state_dir>/facts.json
}

// CacheFile is where cached facts persist, or "" when persistence is off.
func (c *Config) CacheFile() string {
	if !c.Cache.Persist {
		return ""
	}
	if c.Cache.File != "" {
		return c.Cache.File
	}
	return filepath.Join(c.Server.StateDir, "facts.json")
}

// Duration is a time.Duration written as a string: "5s", "10m", "168h".
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q (write e.g. \"5s\", \"10m\", \"168h\")", b)
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// Default returns the documented defaults (see config/README.md and examples/config.toml).
func Default() *Config {
	return &Config{
		Server: Server{
			Socket:            "/run/pullguard/pullguard.sock",
			SocketMode:        "0660",
			Upstream:          "unix:///run/containerd/containerd.sock",
			MaxMessageBytes:   16 << 20,
			ShutdownTimeout:   Duration{10 * time.Second},
			StateDir:          "/var/lib/pullguard",
			UpstreamNamespace: "k8s.io",
			AdminSocket:       "/run/pullguard/admin.sock",
		},
		Log:      Log{Level: "info", Format: "json"},
		Decision: Decision{Timeout: Duration{30 * time.Second}},
		Policy:   Policy{Dir: "/etc/pullguard/policies", DefaultMode: string(policy.ModeEnforce)},
		VA: VA{
			MaxSeverity:         "high",
			Unscanned:           policy.UnscannedDeny,
			MaxReportAge:        Duration{720 * time.Hour},
			RequireSignedReport: true,
			MaxReportBytes:      8 << 20,
			UnknownSeverity:     "critical",
		},
		Registry: Registry{
			Timeout:          Duration{10 * time.Second},
			MaxManifestBytes: 4 << 20,
			MaxBlobBytes:     8 << 20,
			MaxSignatures:    16,
			MaxReferrers:     256,
		},
		Cache: Cache{Size: 10000, TTL: Duration{time.Hour}, NegativeTTL: Duration{time.Minute}, Persist: true},
		Running: Running{
			RecheckInterval:       Duration{10 * time.Minute},
			RecheckConcurrency:    4,
			MaxEvictionsPerMinute: 2,
			ProtectedNamespaces:   []string{"kube-system", "pullguard-system"},
		},
		NRI: NRI{
			Mode:             NRIEnforce,
			Socket:           "/var/run/nri/nri.sock",
			PluginName:       "pullguard",
			PluginIndex:      "10",
			Timeout:          Duration{time.Second},
			ContainerdConfig: "/etc/containerd/config.toml",
			SandboxImage:     "registry.k8s.io/pause:3.10",
		},
	}
}

// MaxConfigBytes bounds a config file.
const MaxConfigBytes = 4 << 20

// Load reads, parses and validates a config file. Relative paths in it are taken relative to
// the file's directory.
func Load(path string) (*Config, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	if fi.Size() > MaxConfigBytes {
		return nil, fmt.Errorf("load config %s: larger than %d bytes", path, MaxConfigBytes)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	c, err := Parse(data, path)
	if err != nil {
		return nil, err
	}
	c.resolve(filepath.Dir(path))
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a config on top of Default(). It checks syntax, types and unknown keys (each
// error names the line or the key) but not semantics: call Validate for that. source names
// the input in messages and in the Source of inline policies.
func Parse(data []byte, source string) (*Config, error) {
	if source == "" {
		source = "config"
	}
	if len(data) > MaxConfigBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", source, MaxConfigBytes)
	}
	c := Default()
	md, err := toml.Decode(string(data), c)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, policy.TOMLError(err))
	}
	if err := policy.UndecodedError(md); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	for i := range c.Signers {
		if c.Signers[i].Revocation == "" {
			c.Signers[i].Revocation = RevocationStrict
		}
	}
	c.Source = source
	return c, nil
}

// Policies returns the inline [[policies]] followed by everything in [policy].dir, each with
// its Source set. It does not build a policy.Set (that is policy.NewSet's job).
func (c *Config) Policies() ([]policy.Policy, error) {
	var out []policy.Policy
	for i := range c.Inline {
		src := fmt.Sprintf("%s#policies[%d]", c.sourceName(), i)
		p, err := c.Inline[i].Policy(src)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
		out = append(out, p)
	}
	if c.Policy.Dir != "" {
		if _, err := os.Stat(c.Policy.Dir); os.IsNotExist(err) {
			return nil, fmt.Errorf("[policy] dir %s does not exist (set dir = \"\" to use inline policies only)", c.Policy.Dir)
		}
		dir, err := policy.LoadDir(c.Policy.Dir)
		if err != nil {
			return nil, err
		}
		out = append(out, dir...)
	}
	// Synced policies come last: on a tie between equally specific patterns the earlier
	// sources win (see daemonset/POLICIES.md).
	if c.Policy.SyncedDir != "" {
		synced, err := policy.LoadDir(c.Policy.SyncedDir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		out = append(out, synced...)
	}
	return out, nil
}

func (c *Config) sourceName() string {
	if c.Source == "" {
		return "config"
	}
	return c.Source
}

// fsPaths lists the settings that name files or directories on the node.
func (c *Config) fsPaths() []*string {
	ps := []*string{&c.Server.StateDir, &c.Policy.Dir, &c.Policy.SyncedDir, &c.Registry.HostsDir, &c.Registry.AuthFile, &c.Cache.File, &c.NRI.ContainerdConfig}
	for i := range c.Signers {
		ps = append(ps, &c.Signers[i].TrustStore, &c.Signers[i].TimestampStore)
	}
	for i := range c.Registry.CAFiles {
		ps = append(ps, &c.Registry.CAFiles[i])
	}
	return ps
}

// resolve makes relative file settings relative to base (the config file's directory).
func (c *Config) resolve(base string) {
	for _, p := range c.fsPaths() {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
}

// WithRoot returns a copy whose file and directory settings (state_dir, policy dir, trust and
// timestamp stores, hosts_dir, CA files, cache file) live under root, as when the node's
// filesystem is mounted at /host in the DaemonSet's pod, or when tests validate an example
// against a scratch directory. The sockets are left alone: they are not opened by Validate.
func (c *Config) WithRoot(root string) *Config {
	cp := *c
	cp.Signers = append([]Signer(nil), c.Signers...)
	cp.Registry.CAFiles = append([]string(nil), c.Registry.CAFiles...)
	for _, p := range cp.fsPaths() {
		if *p != "" {
			*p = filepath.Join(root, *p)
		}
	}
	return &cp
}
