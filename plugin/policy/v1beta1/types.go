package v1beta1

// The API group and version of pullguard's custom resources.
const (
	Group      = "pullguard.dev"
	Version    = "v1beta1"
	APIVersion = Group + "/" + Version
)

// Mode says whether a decision is enforced or only recorded.
//
// +kubebuilder:validation:Enum=enforce;audit
type Mode string

// Running says what happens to a running container whose image is no longer admitted.
//
// +kubebuilder:validation:Enum=report;evict
type Running string

// ImagePolicySpec is what an ImagePolicy or ClusterImagePolicy asks of images. Policies written
// for securityenforcement.admission.cloud.ibm.com/v1beta1 or portieris.cloud.ibm.com/v1 keep
// their meaning here, so migrating one means changing its apiVersion line. Rules are matched
// by plugin/policy on every node.
type ImagePolicySpec struct {
	// enforce (deny what fails) or audit (decide and log, never deny). Empty inherits the
	// node's [policy] default_mode.
	// +optional
	Mode Mode `json:"mode,omitempty" yaml:"mode" toml:"mode"`

	// What happens to a running container whose image this policy no longer admits: report
	// (audit log line, metric, Event) or evict (through the Eviction API, after evictAfter).
	// Entries may override it. Empty means report.
	// +optional
	Running Running `json:"running,omitempty" yaml:"running" toml:"running"`

	// How long a running container may keep an image that is no longer admitted before it is
	// evicted (running: evict), e.g. "5m" or "90s". Entries may override it. Empty means 5m.
	// +optional
	EvictAfter Duration `json:"evictAfter,omitempty" yaml:"evictAfter" toml:"evict_after"`

	// Image name patterns and what each requires. An exact pattern wins over wildcards, then
	// the most specific one. An empty list denies every image; an image no entry matches is
	// denied.
	// +kubebuilder:validation:MaxItems=512
	// +optional
	Repositories []Repository `json:"repositories,omitempty" yaml:"repositories" toml:"repositories"`
}

// Repository is one entry of a policy's repositories list.
type Repository struct {
	// Image name pattern, e.g. "registry.example.com/team/*"; "*" is a wildcard. Host and path
	// are matched separately.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	// +required
	Name string `json:"name" yaml:"name" toml:"name"`

	// Overrides the policy's mode for this entry.
	// +optional
	Mode Mode `json:"mode,omitempty" yaml:"mode" toml:"mode"`

	// Admit (loudly) instead of denying when the registry cannot be reached to decide.
	// +optional
	FailOpen bool `json:"failOpen,omitempty" yaml:"failOpen" toml:"fail_open"`

	// Overrides the policy's running for this entry.
	// +optional
	Running Running `json:"running,omitempty" yaml:"running" toml:"running"`

	// Overrides the policy's evictAfter for this entry.
	// +optional
	EvictAfter Duration `json:"evictAfter,omitempty" yaml:"evictAfter" toml:"evict_after"`

	// The checks an image must pass. Absent (or both checks off) admits matching images with no
	// checks.
	// +optional
	Policy *RepositoryPolicy `json:"policy,omitempty" yaml:"policy" toml:"policy"`

	// Tolerated only empty, where it is a typo for "policy" in a widely copied default policy
	// (ibm-system's last entry). A value is rejected: a check hidden under a misspelt key must
	// not be silently ignored.
	// +nullable
	// +optional
	Policies *MisspeltPolicy `json:"policies,omitempty" yaml:"policies" toml:"-"`
}

// MisspeltPolicy stands for the value of "policies:". The YAML decoder skips a null value, so
// a non-nil *MisspeltPolicy means the key carried something, which is refused.
//
// +kubebuilder:validation:MaxProperties=0
// +kubebuilder:pruning:PreserveUnknownFields
type MisspeltPolicy struct{}

// UnmarshalYAML accepts any value without looking at it.
func (*MisspeltPolicy) UnmarshalYAML(func(any) error) error { return nil }

// RepositoryPolicy is the policy of one repositories entry: the checks its images must pass.
//
// +kubebuilder:validation:XValidation:rule="!has(self.simple)",message="simple (GPG simple signing) is not supported: sign images with notation, set trust.enabled and name the signers in trust.signerSecrets or trust.signers ([[signers]] of the node config)"
type RepositoryPolicy struct {
	// +optional
	Trust *Trust `json:"trust,omitempty" yaml:"trust" toml:"trust"`

	// +optional
	VA *VA `json:"va,omitempty" yaml:"va" toml:"va"`

	// Portieris' form of va: vulnerability.ICCRVA.enabled means va.enabled (either one turns
	// the check on). ICCRVA.account is ignored, with a warning: exemptions are va.allow and the
	// node's [[va.allow]].
	// +optional
	Vulnerability *Vulnerability `json:"vulnerability,omitempty" yaml:"vulnerability" toml:"-"`

	// Accepted for Portieris policies and ignored, with a warning: pullguard never rewrites a
	// pod's image; it pins every verified pull to the digest it checked and checks the node's
	// digest when a container is created.
	// +optional
	MutateImage *bool `json:"mutateImage,omitempty" yaml:"mutateImage" toml:"-"`

	// Portieris' GPG "simple signing" requirements. Not supported, and refused by name rather
	// than ignored: use Notary Project signatures (trust).
	// +optional
	Simple *Unsupported `json:"simple,omitempty" yaml:"simple" toml:"-"`
}

// Unsupported stands for a section pullguard refuses whatever it holds. As with
// MisspeltPolicy, a non-nil value means the key carried something.
//
// +kubebuilder:pruning:PreserveUnknownFields
type Unsupported struct{}

// UnmarshalYAML accepts any value without looking at it.
func (*Unsupported) UnmarshalYAML(func(any) error) error { return nil }

// Trust asks for a Notary Project signature on the image digest.
//
// +kubebuilder:validation:XValidation:rule="!has(self.trustServer) || size(self.trustServer) == 0",message="trustServer (Notary v1) is not supported: pullguard verifies notation signatures stored in the image's registry; name the signers in signerSecrets or signers ([[signers]] of the node config)"
type Trust struct {
	// Require a valid Notary Project signature on the image digest.
	// +optional
	Enabled bool `json:"enabled,omitempty" yaml:"enabled" toml:"enabled"`

	// Signers that must ALL have signed the digest. Each name is a signer defined in the node
	// config ([[signers]]); see daemonset/POLICIES.md for how a Secret of that name in
	// pullguard's namespace supplies its certificates.
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=32
	// +optional
	SignerSecrets []SignerSecret `json:"signerSecrets,omitempty" yaml:"signerSecrets" toml:"-"`

	// pullguard's form of signerSecrets; both lists are combined.
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Signers []SignerName `json:"signers,omitempty" yaml:"signers" toml:"signers"`

	// A Notary v1 (Docker Content Trust) server. Not supported, and refused by name rather than
	// ignored: pullguard verifies notation signatures stored beside the image.
	// +kubebuilder:validation:MaxLength=2048
	// +optional
	TrustServer string `json:"trustServer,omitempty" yaml:"trustServer" toml:"-"`
}

// SignerSecret names a signer, in the form of a reference to a Secret.
type SignerSecret struct {
	// +required
	Name SignerName `json:"name" yaml:"name" toml:"name"`
}

// SignerName is the name of a [[signers]] entry of the node config.
//
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=253
// +kubebuilder:validation:Pattern=`^[a-zA-Z0-9_.-]+$`
type SignerName string

// VA asks for a passing vulnerability assessment. The knobs left out fall back to the node's
// [va] section.
type VA struct {
	// Require a passing vulnerability assessment (scan reports attached as OCI referrers).
	// +optional
	Enabled bool `json:"enabled,omitempty" yaml:"enabled" toml:"enabled"`

	// Deny findings above this severity. Empty uses the node's [va] max_severity.
	// +kubebuilder:validation:Enum=none;low;medium;high;critical
	// +optional
	MaxSeverity *string `json:"maxSeverity,omitempty" yaml:"maxSeverity" toml:"max_severity"`

	// +optional
	IgnoreUnfixed *bool `json:"ignoreUnfixed,omitempty" yaml:"ignoreUnfixed" toml:"ignore_unfixed"`

	// What to do with an image no scan report covers.
	// +kubebuilder:validation:Enum=deny;allow
	// +optional
	Unscanned *string `json:"unscanned,omitempty" yaml:"unscanned" toml:"unscanned"`

	// Oldest scan report accepted, as a Go duration ("168h").
	// +optional
	MaxReportAge *Duration `json:"maxReportAge,omitempty" yaml:"maxReportAge" toml:"max_report_age"`

	// +optional
	RequireSignedReport *bool `json:"requireSignedReport,omitempty" yaml:"requireSignedReport" toml:"require_signed_report"`

	// Vulnerabilities exempted from VA.
	// +kubebuilder:validation:MaxItems=1024
	// +optional
	Allow []Exemption `json:"allow,omitempty" yaml:"allow" toml:"allow"`
}

// Exemption exempts one vulnerability id from VA (also the node config's [[va.allow]]).
type Exemption struct {
	// Vulnerability id, e.g. CVE-2024-1234.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +required
	ID string `json:"id" yaml:"id" toml:"id"`

	// Last day ("2027-01-31", through its end in UTC) or RFC 3339 instant the exemption
	// applies.
	// +optional
	Expires Date `json:"expires,omitempty" yaml:"expires" toml:"expires"`

	// Limit the exemption to these namespaces; empty means every namespace.
	// +kubebuilder:validation:MaxItems=256
	// +optional
	Namespaces []NamespaceName `json:"namespaces,omitempty" yaml:"namespaces" toml:"namespaces"`
}

// NamespaceName is a Kubernetes namespace name.
//
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=63
type NamespaceName string

// Vulnerability is Portieris' vulnerability policy.
type Vulnerability struct {
	// +optional
	ICCRVA *ICCRVA `json:"ICCRVA,omitempty" yaml:"ICCRVA" toml:"-"`
}

// ICCRVA is Portieris' Vulnerability Advisor policy, which pullguard maps onto va.
type ICCRVA struct {
	// Same as va.enabled.
	// +optional
	Enabled bool `json:"enabled,omitempty" yaml:"enabled" toml:"-"`

	// Ignored, with a warning: pullguard takes exemptions from va.allow and the node's
	// [[va.allow]], not from an account.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Account string `json:"account,omitempty" yaml:"account" toml:"-"`
}
