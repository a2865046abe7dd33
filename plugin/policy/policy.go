// Package policy holds pullguard's image policy model (ClusterImagePolicy and ImagePolicy),
// loads it from YAML and TOML, and decides which rule applies to an image in a namespace. The
// schema those files follow is plugin/policy/v1beta1's, converted into this model in one place
// (FromSpec); the model is what matching and plugin/enforce read. It knows nothing about how
// checks are carried out: trust and VA are only described here and evaluated by plugin/enforce.
package policy

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Kind says whether a policy is cluster-wide or belongs to one namespace.
type Kind string

const (
	KindCluster   Kind = "ClusterImagePolicy"
	KindNamespace Kind = "ImagePolicy"
)

// Mode says whether a decision is enforced or only recorded.
type Mode string

const (
	ModeEnforce Mode = "enforce"
	ModeAudit   Mode = "audit"
)

// Running says what happens to a running container whose image is no longer admitted.
type Running string

const (
	// RunningReport reports it: an audit log line, a metric and an Event.
	RunningReport Running = "report"
	// RunningEvict evicts the container's pod through the Kubernetes Eviction API, the
	// rule's EvictAfter after the image stopped being admitted.
	RunningEvict Running = "evict"
)

// DefaultEvictAfter is how long a running container may keep a refused image before it is
// evicted, when neither the entry nor the policy says.
const DefaultEvictAfter = 5 * time.Minute

// Severities accepted for VA max_severity, lowest first.
var severities = []string{"none", "low", "medium", "high", "critical"}

// Unscanned handling values.
const (
	UnscannedDeny  = "deny"
	UnscannedAllow = "allow"
)

// Trust asks for a Notary Project signature on the image digest.
type Trust struct {
	Enabled bool
	// Signers are names of signers defined in the node config; every one of them must have
	// signed the digest. Empty means any signer trusted by the node will do.
	Signers []string
}

// Exemption exempts one vulnerability id from VA.
type Exemption struct {
	ID string
	// Expires is the last instant the exemption applies; zero means it never expires. A
	// date-only value "2027-01-31" becomes the end of that day in UTC, so the exemption still
	// holds on the 31st and an exemption is expired iff now.After(Expires).
	Expires time.Time
	// Namespaces limits the exemption to these namespaces; empty means every namespace.
	Namespaces []string
}

// VA asks for a passing vulnerability assessment. The knobs are pointers because nil means
// "use the node default" (the [va] section of the node config); enforce resolves them.
type VA struct {
	Enabled             bool
	MaxSeverity         *string
	IgnoreUnfixed       *bool
	Unscanned           *string
	MaxReportAge        *time.Duration
	RequireSignedReport *bool
	Allow               []Exemption
}

// Checks is what a rule requires. The zero value admits with no checks.
type Checks struct {
	Trust Trust
	VA    VA
}

// None reports whether the checks admit an image without looking at it.
func (c Checks) None() bool { return !c.Trust.Enabled && !c.VA.Enabled }

// Rule is one entry of a policy's repositories list.
type Rule struct {
	Name     string // the pattern as written, e.g. "registry.example.com/team/*"
	Checks   Checks
	Mode     Mode // as written: "" inherits; NewSet fills in the effective mode
	FailOpen bool // RegistryUnavailable admits (loudly) instead of denying
	Index    int  // position within the policy, for messages
	// Running and EvictAfter are resolved when a policy is converted (the entry's value, else
	// the policy's, else RunningReport and DefaultEvictAfter): unlike the mode, no node setting
	// takes part. NewSet fills in the defaults for rules built in code that leave them zero.
	Running    Running
	EvictAfter time.Duration
}

// Policy is one ClusterImagePolicy or ImagePolicy.
type Policy struct {
	Kind      Kind
	Name      string
	Namespace string // only for KindNamespace
	Source    string // file path (+ "#doc N" for multi-document YAML), "config.toml", "crd"
	Mode      Mode   // "" = the set's default
	Rules     []Rule // empty = deny everything
	// Warnings are notes from loading: fields accepted for compatibility that pullguard does
	// not act on. config.Warnings reports them with the policy's name.
	Warnings []string
}

// String names the policy the way messages and logs do: kind, namespace/name and source.
func (p *Policy) String() string {
	name := p.Name
	if p.Kind == KindNamespace {
		name = p.Namespace + "/" + p.Name
	}
	if p.Source == "" {
		return fmt.Sprintf("%s %s", p.Kind, name)
	}
	return fmt.Sprintf("%s %s (%s)", p.Kind, name, p.Source)
}

// ErrInvalidImage is wrapped by Match when the image name cannot be parsed.
var ErrInvalidImage = errors.New("invalid image name")

// Validate checks a policy on its own: kind, names, modes, VA values and every pattern. It
// does not know which signers exist; the node config checks that.
func (p *Policy) Validate() error {
	switch p.Kind {
	case KindCluster:
		if p.Namespace != "" {
			return fmt.Errorf("%s %q: a cluster policy has no namespace (got %q)", p.Kind, p.Name, p.Namespace)
		}
	case KindNamespace:
		if p.Namespace == "" {
			return fmt.Errorf("%s %q: namespace is required", p.Kind, p.Name)
		}
	case "":
		return fmt.Errorf("policy %q: kind is required (%s or %s)", p.Name, KindCluster, KindNamespace)
	default:
		return fmt.Errorf("policy %q: unknown kind %q (want %s or %s)", p.Name, p.Kind, KindCluster, KindNamespace)
	}
	if p.Name == "" {
		return fmt.Errorf("%s: name is required", p.Kind)
	}
	if err := validateMode(p.Mode); err != nil {
		return fmt.Errorf("%s %q: %w", p.Kind, p.Name, err)
	}
	for i := range p.Rules {
		if err := p.Rules[i].validate(); err != nil {
			return fmt.Errorf("%s %q: repositories[%d] %q: %w", p.Kind, p.Name, i, p.Rules[i].Name, err)
		}
	}
	return nil
}

func (r *Rule) validate() error {
	if err := validateMode(r.Mode); err != nil {
		return err
	}
	if err := validateRunning(r.Running); err != nil {
		return err
	}
	if r.EvictAfter < 0 {
		return fmt.Errorf("evictAfter: must be positive, got %s", r.EvictAfter)
	}
	if _, err := compilePattern(r.Name); err != nil {
		return err
	}
	for _, s := range r.Checks.Trust.Signers {
		if strings.TrimSpace(s) == "" {
			return errors.New("trust.signers: empty signer name")
		}
	}
	return r.Checks.VA.validate()
}

func (v *VA) validate() error {
	if v.MaxSeverity != nil {
		if err := ValidateSeverity(*v.MaxSeverity); err != nil {
			return fmt.Errorf("va max_severity: %w", err)
		}
	}
	if v.Unscanned != nil {
		if err := ValidateUnscanned(*v.Unscanned); err != nil {
			return fmt.Errorf("va unscanned: %w", err)
		}
	}
	if v.MaxReportAge != nil && *v.MaxReportAge <= 0 {
		return fmt.Errorf("va max_report_age: must be positive, got %s", *v.MaxReportAge)
	}
	for i, e := range v.Allow {
		if err := e.Validate(); err != nil {
			return fmt.Errorf("va allow[%d]: %w", i, err)
		}
	}
	return nil
}

// Validate checks one exemption.
func (e Exemption) Validate() error {
	if strings.TrimSpace(e.ID) == "" {
		return errors.New("id is required")
	}
	for _, ns := range e.Namespaces {
		if ns == "" {
			return fmt.Errorf("%s: empty namespace in namespaces", e.ID)
		}
	}
	return nil
}

func validateMode(m Mode) error {
	switch m {
	case "", ModeEnforce, ModeAudit:
		return nil
	}
	return fmt.Errorf("unknown mode %q (want %s or %s)", m, ModeEnforce, ModeAudit)
}

func validateRunning(r Running) error {
	switch r {
	case "", RunningReport, RunningEvict:
		return nil
	}
	return fmt.Errorf("running: unknown value %q (want %s or %s)", r, RunningReport, RunningEvict)
}

// ValidateMode checks a mode value; "" is accepted and means "inherit".
func ValidateMode(m Mode) error { return validateMode(m) }

// ValidateSeverity checks a max_severity value (none|low|medium|high|critical).
func ValidateSeverity(s string) error {
	for _, v := range severities {
		if s == v {
			return nil
		}
	}
	return fmt.Errorf("unknown severity %q (want one of %s)", s, strings.Join(severities, "|"))
}

// SeverityRank orders severities: none=0 … critical=4; -1 for an unknown value.
func SeverityRank(s string) int {
	for i, v := range severities {
		if s == v {
			return i
		}
	}
	return -1
}

// ValidateUnscanned checks an unscanned value (deny|allow).
func ValidateUnscanned(s string) error {
	if s == UnscannedDeny || s == UnscannedAllow {
		return nil
	}
	return fmt.Errorf("unknown value %q (want %s or %s)", s, UnscannedDeny, UnscannedAllow)
}
