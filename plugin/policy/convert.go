package policy

import (
	"errors"
	"fmt"
	"time"

	"github.com/pullguard/pullguard/plugin/policy/v1beta1"
)

// FromSpec turns a policy as decoded from any of its encodings (a YAML document, a custom
// resource, a TOML [[policies]] table) into the model and validates it. It is the only place
// where the API's fields get their meaning: Portieris' vulnerability section becomes va,
// fields pullguard cannot honour are refused by name, running and evictAfter are resolved per
// entry, and fields accepted but not acted on leave a warning in Policy.Warnings.
//
// specPath is how the encoding names the spec in error messages ("spec." in documents, "" in
// TOML tables, whose policy keys sit at the top); a nil spec is a policy with no repositories,
// which denies everything.
func FromSpec(kind Kind, name, namespace, specPath string, spec *v1beta1.ImagePolicySpec) (Policy, error) {
	p := Policy{Kind: kind, Name: name, Namespace: namespace}
	if spec == nil {
		spec = &v1beta1.ImagePolicySpec{}
	}
	p.Mode = Mode(spec.Mode)
	running, evictAfter, err := resolveRunning(RunningReport, DefaultEvictAfter, spec.Running, spec.EvictAfter)
	if err != nil {
		return Policy{}, fmt.Errorf("%s%w", specPath, err)
	}
	p.Rules = make([]Rule, 0, len(spec.Repositories))
	for i := range spec.Repositories {
		r := &spec.Repositories[i]
		rule, warnings, err := ruleFromSpec(r, i, running, evictAfter)
		if err != nil {
			return Policy{}, fmt.Errorf("%srepositories[%d] %q: %w", specPath, i, r.Name, err)
		}
		for _, w := range warnings {
			p.Warnings = append(p.Warnings, fmt.Sprintf("%srepositories[%d] %q: %s", specPath, i, r.Name, w))
		}
		p.Rules = append(p.Rules, rule)
	}
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	return p, nil
}

// resolveRunning applies what one level (the policy, or an entry) writes on top of what it
// inherits.
func resolveRunning(inherited Running, inheritedAfter time.Duration, running v1beta1.Running, after v1beta1.Duration) (Running, time.Duration, error) {
	if running != "" {
		if err := validateRunning(Running(running)); err != nil {
			return "", 0, err
		}
		inherited = Running(running)
	}
	if after != "" {
		d, err := after.Duration()
		if err != nil {
			return "", 0, fmt.Errorf("evictAfter: %w", err)
		}
		if d <= 0 {
			return "", 0, fmt.Errorf("evictAfter: must be positive, got %s", after)
		}
		inheritedAfter = d
	}
	return inherited, inheritedAfter, nil
}

func ruleFromSpec(r *v1beta1.Repository, i int, running Running, evictAfter time.Duration) (Rule, []string, error) {
	if r.Policies != nil {
		return Rule{}, nil, errors.New(`unknown field "policies" (did you mean "policy"? an empty "policies:" is tolerated for the ibm-system default policy, a value is not)`)
	}
	rule := Rule{Name: r.Name, Mode: Mode(r.Mode), FailOpen: r.FailOpen, Index: i}
	var err error
	if rule.Running, rule.EvictAfter, err = resolveRunning(running, evictAfter, r.Running, r.EvictAfter); err != nil {
		return Rule{}, nil, err
	}
	pol := r.Policy
	if pol == nil {
		return rule, nil, nil
	}
	var warnings []string
	if pol.Simple != nil {
		return Rule{}, nil, errors.New("policy.simple (GPG simple signing) is not supported: sign the images with notation and " +
			"require it with policy.trust.enabled, naming the signers in trust.signerSecrets or trust.signers ([[signers]] in the node config)")
	}
	if t := pol.Trust; t != nil {
		if t.TrustServer != "" {
			return Rule{}, nil, errors.New("policy.trust.trustServer (a Notary v1 server) is not supported: pullguard verifies notation " +
				"signatures stored in the image's registry; drop trustServer and name the signers in trust.signerSecrets or trust.signers ([[signers]] in the node config)")
		}
		rule.Checks.Trust.Enabled = t.Enabled
		for j, s := range t.SignerSecrets {
			if s.Name == "" {
				return Rule{}, nil, fmt.Errorf("policy.trust.signerSecrets[%d]: name is required", j)
			}
			rule.Checks.Trust.Signers = appendUnique(rule.Checks.Trust.Signers, string(s.Name))
		}
		for _, s := range t.Signers {
			rule.Checks.Trust.Signers = appendUnique(rule.Checks.Trust.Signers, string(s))
		}
	}
	if v := pol.VA; v != nil {
		if rule.Checks.VA, err = vaFromSpec(v); err != nil {
			return Rule{}, nil, fmt.Errorf("policy.va.%w", err)
		}
	}
	if v := pol.Vulnerability; v != nil && v.ICCRVA != nil {
		// Either form turning the check on turns it on: a check asked for anywhere is enforced.
		rule.Checks.VA.Enabled = rule.Checks.VA.Enabled || v.ICCRVA.Enabled
		if v.ICCRVA.Account != "" {
			warnings = append(warnings, fmt.Sprintf("policy.vulnerability.ICCRVA.account %q is ignored: pullguard takes VA exemptions from va.allow and the node's [[va.allow]]", v.ICCRVA.Account))
		}
	}
	if pol.MutateImage != nil {
		warnings = append(warnings, fmt.Sprintf("policy.mutateImage (%t) has no effect: pullguard never rewrites a pod's image; it pins each verified pull to the digest it checked and checks the node's digest when a container is created", *pol.MutateImage))
	}
	return rule, warnings, nil
}

func vaFromSpec(v *v1beta1.VA) (VA, error) {
	va := VA{
		Enabled:             v.Enabled,
		MaxSeverity:         clonePtr(v.MaxSeverity),
		IgnoreUnfixed:       clonePtr(v.IgnoreUnfixed),
		Unscanned:           clonePtr(v.Unscanned),
		RequireSignedReport: clonePtr(v.RequireSignedReport),
	}
	if v.MaxReportAge != nil {
		d, err := v.MaxReportAge.Duration()
		if err != nil {
			return VA{}, fmt.Errorf("maxReportAge: %w", err)
		}
		va.MaxReportAge = &d
	}
	for j, e := range v.Allow {
		x, err := ExemptionFromSpec(e)
		if err != nil {
			return VA{}, fmt.Errorf("allow[%d]: %w", j, err)
		}
		va.Allow = append(va.Allow, x)
	}
	return va, nil
}

// ExemptionFromSpec converts one exemption (a policy's va.allow entry, or the node config's
// [[va.allow]]) into the model. It does not validate it: Exemption.Validate does.
func ExemptionFromSpec(e v1beta1.Exemption) (Exemption, error) {
	expires, err := e.Expires.Time()
	if err != nil {
		return Exemption{}, fmt.Errorf("%s: expires: %w", e.ID, err)
	}
	x := Exemption{ID: e.ID, Expires: expires}
	for _, ns := range e.Namespaces {
		x.Namespaces = append(x.Namespaces, string(ns))
	}
	return x, nil
}

func appendUnique(list []string, s string) []string {
	for _, v := range list {
		if v == s {
			return list
		}
	}
	return append(list, s)
}
