package enforce

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pullguard/pullguard/plugin/policy"
	"github.com/pullguard/pullguard/plugin/trust"
	"github.com/pullguard/pullguard/plugin/va"
)

// ReportSource finds the newest trustworthy scan report of an image.
type ReportSource interface {
	Report(ctx context.Context, q va.Query) (*va.Attested, error)
}

// VADefaults are the node's [va] settings; a rule's own knobs override them.
type VADefaults struct {
	MaxSeverity         string
	IgnoreUnfixed       bool
	Unscanned           string // deny|allow
	MaxReportAge        time.Duration
	RequireSignedReport bool
	UnknownSeverity     string // "" = critical
	Allow               []policy.Exemption
	// ScannerMaterialHash identifies the scanner signers' trust material:
	// a report vouched for under other material must be checked again.
	ScannerMaterialHash string
}

// knobs merges a rule's va settings over the node defaults.
type knobs struct {
	opts          va.Options
	unscanned     string
	requireSigned bool
}

func (e *Engine) vaKnobs(rule policy.VA) (knobs, error) {
	def := e.opts.VADefaults
	k := knobs{unscanned: def.Unscanned, requireSigned: def.RequireSignedReport}
	maxSev := def.MaxSeverity
	k.opts.IgnoreUnfixed = def.IgnoreUnfixed
	k.opts.MaxReportAge = def.MaxReportAge
	if rule.MaxSeverity != nil {
		maxSev = *rule.MaxSeverity
	}
	if rule.IgnoreUnfixed != nil {
		k.opts.IgnoreUnfixed = *rule.IgnoreUnfixed
	}
	if rule.Unscanned != nil {
		k.unscanned = *rule.Unscanned
	}
	if rule.MaxReportAge != nil {
		k.opts.MaxReportAge = *rule.MaxReportAge
	}
	if rule.RequireSignedReport != nil {
		k.requireSigned = *rule.RequireSignedReport
	}
	if maxSev == "" {
		// The zero threshold would admit no finding at all; an unset one
		// is the documented default.
		maxSev = "high"
	}
	sev, err := va.ParseSeverity(maxSev)
	if err != nil {
		return k, fmt.Errorf("max_severity: %w", err)
	}
	k.opts.MaxSeverity = sev
	if def.UnknownSeverity != "" {
		if k.opts.UnknownSeverity, err = va.ParseSeverity(def.UnknownSeverity); err != nil {
			return k, fmt.Errorf("unknown_severity: %w", err)
		}
	}
	for _, x := range append(append([]policy.Exemption(nil), def.Allow...), rule.Allow...) {
		k.opts.Allow = append(k.opts.Allow, va.Exemption{ID: x.ID, Expires: x.Expires, Namespaces: x.Namespaces})
	}
	return k, nil
}

// checkVA returns why the image fails vulnerability assessment.
func (e *Engine) checkVA(ctx context.Context, req Request, s *subject, rule policy.VA, d *Decision) *failure {
	if e.opts.Reports == nil {
		return &failure{category: SignatureValidationFailed, reason: "the rule requires vulnerability assessment but no report source is configured on this node"}
	}
	k, err := e.vaKnobs(rule)
	if err != nil {
		return &failure{category: SignatureValidationFailed, reason: fmt.Sprintf("va settings: %v", err)}
	}
	find := func(ctx context.Context) (*Facts, error) {
		if err := e.complete(ctx, s); err != nil {
			return absent(s, err)
		}
		att, err := e.opts.Reports.Report(ctx, va.Query{
			Image:         va.Image{Name: s.name, Subject: s.desc, Registry: s.src},
			RequireSigned: k.requireSigned,
		})
		if kind := reportProblem(err); kind != "" {
			// What the registry holds is itself the fact: cached like a
			// report, so a decision from cached facts can use it too.
			return &Facts{NoReport: err.Error(), NoReportKind: kind}, nil
		}
		if err != nil {
			return nil, err
		}
		return &Facts{Report: att}, nil
	}
	key := fmt.Sprintf("va\x00%s\x00%s\x00signed=%v\x00%s", s.repo, s.desc.Digest, k.requireSigned, e.opts.VADefaults.ScannerMaterialHash)
	facts, f, err := e.facts(ctx, s, key, find)
	if f != nil {
		return f
	}
	if err == nil && facts.Absent != "" {
		return absentFailure(facts)
	}
	if err == nil && facts.Report == nil && facts.NoReport == "" {
		err = errors.New("cached facts hold no scan report facts")
	}
	if err != nil {
		return registryFailure(fmt.Sprintf("find the vulnerability report of %s@%s", s.repo, s.desc.Digest), err)
	}
	switch facts.NoReportKind {
	case "":
	case noReport:
		if k.unscanned == policy.UnscannedAllow {
			d.Unscanned = true
			d.Details = append(d.Details, fmt.Sprintf("va: no scan report for %s; admitted because unscanned = allow", s.desc.Digest))
			return nil
		}
		what := "scan report"
		if k.requireSigned {
			what = "scan report signed by a scanner signer"
		}
		return &failure{category: SignatureValidationFailed, reason: fmt.Sprintf("no vulnerability %s is attached to %s (unscanned = deny)", what, s.desc.Digest)}
	default:
		return &failure{category: SignatureValidationFailed, reason: fmt.Sprintf("vulnerability report: %s", facts.NoReport)}
	}
	att := facts.Report
	res := va.Evaluate(att.Report, k.opts, req.Namespace, e.opts.Now())
	vouched := ""
	if att.Signer != "" {
		vouched = ", signed by " + att.Signer
	}
	d.Details = append(d.Details, fmt.Sprintf("va: report %s (%s%s): %s", att.Descriptor.Digest, att.MediaType, vouched, res.Message(va.DefaultMessageFindings)))
	d.VA = &res
	if !res.Pass {
		return &failure{category: SignatureValidationFailed, reason: res.Message(va.DefaultMessageFindings)}
	}
	return nil
}

// Kinds of "no usable report" facts.
const (
	noReport       = "none"
	rejectedReport = "rejected"
)

// reportProblem classifies a report source's error: "" when err is no
// statement about the registry's content (nil, or the registry could not be
// asked).
func reportProblem(err error) string {
	switch {
	case errors.Is(err, va.ErrNoReport):
		return noReport
	case errors.Is(err, va.ErrUntrustedReport), errors.Is(err, va.ErrMalformedReport), errors.Is(err, va.ErrNotSigned):
		return rejectedReport
	}
	return ""
}

// ReportVerifier vouches for scan reports with the scanner signers'
// notation signatures on the report manifest.
type ReportVerifier struct {
	Verifier *trust.Verifier // built from the scanner signers only
}

// VerifyReport implements va.ReportVerifier.
func (r ReportVerifier) VerifyReport(ctx context.Context, image va.Image, desc ocispec.Descriptor) (string, error) {
	src, ok := image.Registry.(trust.SignatureSource)
	if !ok {
		return "", fmt.Errorf("report %s: its source cannot list signatures: %w", desc.Digest, va.ErrNotSigned)
	}
	facts, err := r.Verifier.VerifyFrom(ctx, src, reference.TrimNamed(image.Name), desc)
	if err != nil {
		return "", fmt.Errorf("verify report signatures: %w", err)
	}
	if len(facts.VerifiedSigners) == 0 {
		// The source names the report; say only why it is not vouched for.
		return "", fmt.Errorf("%s: %w", facts.Unmet(nil), va.ErrNotSigned)
	}
	return facts.VerifiedSigners[0], nil
}
