// Package enforce is where policy meets facts: it turns (namespace, image,
// credentials) into a Decision, and it writes every denial message. Nothing
// here knows about gRPC or CRI types; the proxy translates.
package enforce

import (
	"fmt"
	"strings"
	"time"

	"github.com/pullguard/pullguard/plugin/policy"
	"github.com/pullguard/pullguard/plugin/registry"
	"github.com/pullguard/pullguard/plugin/va"
)

// Verdict is the outcome of a decision.
type Verdict string

const (
	Admit Verdict = "admit"
	Deny  Verdict = "deny"
)

// Category is the prefix kubelet maps to a pod reason. Only two exist so that
// the pod's status tells an operator whether to fix the image or the network.
type Category string

const (
	// SignatureValidationFailed covers every policy, trust and VA denial.
	SignatureValidationFailed Category = "SignatureValidationFailed"
	// RegistryUnavailable means pullguard could not reach what it needed to decide.
	RegistryUnavailable Category = "RegistryUnavailable"
	// InvalidImage is a request that cannot be decided at all (malformed name).
	InvalidImage Category = "InvalidImage"
)

// Operation says which CRI call asked, for logs and messages.
type Operation string

const (
	OpPull   Operation = "pull"
	OpCreate Operation = "create"
	OpCheck  Operation = "check"
	// OpSandbox decides the sandbox (pause) image containerd runs for
	// every pod, ahead of the pods.
	OpSandbox Operation = "sandbox"
	// OpVerify fetches and verifies what a decision from cached facts
	// found missing, in the background.
	OpVerify Operation = "verify"
	// OpRunning re-decides a container that is already running.
	OpRunning Operation = "running"
)

// Request is what the proxy (or `pullguard check`) asks about.
type Request struct {
	Op        Operation
	Namespace string // "" when the call carried no pod: the cluster policy decides
	Image     string // as the client wrote it
	// Digest, when known (create time), is the content the rules are
	// checked against instead of resolving Image again.
	Digest string
	// ImageID is the image containerd will run (its config digest), when
	// deciding on the node's content; it is reported, Digest is checked.
	ImageID string
	// CachedOnly decides from facts already established, fetching nothing:
	// a fact not known yet denies with NotVerified set. Decisions made
	// inside containerd's container creation must never wait on a registry.
	CachedOnly bool
	// Fresh establishes the facts again from the registry even when they
	// are cached (the periodic re-check of running images). When that
	// fails, the cached facts stay.
	Fresh bool
	// Credentials returns the registry credentials sent with the request for
	// a registry host (nil when none apply). They are used for this decision
	// only, never cached and never logged.
	Credentials registry.CredentialFunc
}

// Decision is the answer, with everything a denial message and an audit log
// line need.
type Decision struct {
	Verdict  Verdict
	Category Category // set when Verdict is Deny, or when an audit-mode rule would have denied
	// Audited is true when the rule is in audit mode and would have denied:
	// the image is admitted and the would-be denial is logged.
	Audited bool
	// FailedOpen is true when the registry could not be reached and the rule
	// opted into fail_open: admitted without the checks it asks for.
	FailedOpen bool
	// NotVerified is true when a decision from cached facts lacked some:
	// denied until a verification in the background establishes them.
	NotVerified bool
	// Unscanned is true when the rule asks for vulnerability assessment, no
	// scan report was found, and the rule's unscanned = allow admitted it.
	Unscanned bool

	Op        Operation
	Namespace string
	Image     string // normalised when it could be parsed, else as given
	Digest    string // resolved or verified digest, when known
	// ImageID is the image containerd runs (its config digest), for
	// decisions made on the node's content.
	ImageID string
	// PinnedRef is repo@digest: what the pull must fetch so that what lands
	// is what was verified. Empty when nothing was resolved.
	PinnedRef string

	Policy string // e.g. `ImagePolicy team-a/strict (policies/team-a.yaml)`
	Rule   string // the repositories[].name that matched
	// Running and EvictAfter are the matched rule's answer to what happens
	// to a running container whose image this decision does not admit.
	Running    policy.Running
	EvictAfter time.Duration
	PolicyHash string
	Reason     string
	Details    []string // per-signature / per-finding explanation lines for `check`
	// VA is the vulnerability assessment result, when one was made; the
	// audit line carries its full counts.
	VA      *va.Result
	Latency time.Duration
}

// Denied reports whether the caller must refuse the request.
func (d *Decision) Denied() bool { return d.Verdict == Deny }

// Message is the one-line text a client sees on denial. It starts with the
// category so that kubelet sets the pod's reason from it.
func (d *Decision) Message() string {
	var b strings.Builder
	cat := d.Category
	if cat == "" {
		cat = SignatureValidationFailed
	}
	b.WriteString(string(cat))
	b.WriteString(": ")
	switch cat {
	case RegistryUnavailable:
		fmt.Fprintf(&b, "pullguard could not decide on image %q for %s", d.Image, d.nsPhrase())
	case InvalidImage:
		fmt.Fprintf(&b, "pullguard refused image %q for %s", d.Image, d.nsPhrase())
	default:
		fmt.Fprintf(&b, "pullguard denied image %q for %s", d.Image, d.nsPhrase())
	}
	switch {
	case d.Digest != "" && d.ImageID != "":
		fmt.Fprintf(&b, " (digest %s, image ID %s)", d.Digest, d.ImageID)
	case d.Digest != "":
		fmt.Fprintf(&b, " (digest %s)", d.Digest)
	case d.ImageID != "":
		fmt.Fprintf(&b, " (image ID %s)", d.ImageID)
	}
	if d.Policy != "" {
		fmt.Fprintf(&b, ": %s", d.Policy)
		if d.Rule != "" {
			fmt.Fprintf(&b, " rule %q", d.Rule)
		}
	}
	if d.Reason != "" {
		b.WriteString(": ")
		b.WriteString(d.Reason)
	}
	// One line: kubelet shows it in events and pod status.
	return strings.ReplaceAll(b.String(), "\n", " ")
}

func (d *Decision) nsPhrase() string {
	if d.Namespace == "" {
		return "the cluster policy (no pod namespace in the request)"
	}
	return fmt.Sprintf("namespace %q", d.Namespace)
}
