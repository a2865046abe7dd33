package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/distribution/reference"
)

// Set is a validated, compiled collection of policies. It is immutable after NewSet and safe
// for concurrent use; a reload builds a new Set.
type Set struct {
	policies []*Policy
	cluster  []*compiledPolicy
	byNS     map[string][]*compiledPolicy
	hash     string
}

type compiledPolicy struct {
	p     *Policy
	rules []*pattern // parallel to p.Rules
}

// Match is the outcome of matching one image in one namespace.
type Match struct {
	Image     reference.Named // normalised; tag/digest as given, ":latest" if neither
	Namespace string
	Scope     Kind      // which kind of policy applied; "" when there were none at all
	Policies  []*Policy // the policies that were consulted
	Policy    *Policy   // the policy whose rule matched; nil if none
	Rule      *Rule     // nil => denied; Reason says why
	Reason    string    // set when Rule == nil
}

// NewSet validates and compiles policies. Rules get their effective mode (rule's, else the
// policy's, else defaultMode, else enforce), and RunningReport and DefaultEvictAfter where
// they were left zero (rules built in code; converted ones have them resolved). The input is
// copied; later changes to it do not affect the Set. Order matters only to break ties between
// equally specific patterns: the first one wins.
func NewSet(policies []Policy, defaultMode Mode) (*Set, error) {
	if defaultMode == "" {
		defaultMode = ModeEnforce
	}
	if err := validateMode(defaultMode); err != nil {
		return nil, fmt.Errorf("default mode: %w", err)
	}
	s := &Set{byNS: map[string][]*compiledPolicy{}}
	seen := map[string]string{}
	for i := range policies {
		p := clonePolicy(&policies[i])
		if err := p.Validate(); err != nil {
			return nil, withSource(p.Source, err)
		}
		key := string(p.Kind) + "/" + p.Namespace + "/" + p.Name
		if prev, dup := seen[key]; dup {
			return nil, fmt.Errorf("%s: duplicate policy: already defined in %s", p, prev)
		}
		seen[key] = orUnknown(p.Source)
		cp := &compiledPolicy{p: p, rules: make([]*pattern, len(p.Rules))}
		for j := range p.Rules {
			r := &p.Rules[j]
			r.Index = j
			switch {
			case r.Mode != "":
			case p.Mode != "":
				r.Mode = p.Mode
			default:
				r.Mode = defaultMode
			}
			if r.Running == "" {
				r.Running = RunningReport
			}
			if r.EvictAfter == 0 {
				r.EvictAfter = DefaultEvictAfter
			}
			pat, err := compilePattern(r.Name)
			if err != nil { // Validate already compiled it; kept for safety
				return nil, withSource(p.Source, fmt.Errorf("%s repositories[%d] %q: %w", p, j, r.Name, err))
			}
			cp.rules[j] = pat
		}
		s.policies = append(s.policies, p)
		if p.Kind == KindCluster {
			s.cluster = append(s.cluster, cp)
		} else {
			s.byNS[p.Namespace] = append(s.byNS[p.Namespace], cp)
		}
	}
	s.hash = hashPolicies(s.policies)
	return s, nil
}

func withSource(source string, err error) error {
	if source == "" {
		return err
	}
	return fmt.Errorf("%s: %w", source, err)
}

func orUnknown(s string) string {
	if s == "" {
		return "an unnamed source"
	}
	return s
}

func clonePolicy(in *Policy) *Policy {
	p := *in
	p.Warnings = append([]string(nil), in.Warnings...)
	p.Rules = make([]Rule, len(in.Rules))
	for i, r := range in.Rules {
		r.Checks.Trust.Signers = append([]string(nil), r.Checks.Trust.Signers...)
		va := &r.Checks.VA
		va.MaxSeverity = clonePtr(va.MaxSeverity)
		va.IgnoreUnfixed = clonePtr(va.IgnoreUnfixed)
		va.Unscanned = clonePtr(va.Unscanned)
		va.MaxReportAge = clonePtr(va.MaxReportAge)
		va.RequireSignedReport = clonePtr(va.RequireSignedReport)
		allow := make([]Exemption, len(va.Allow))
		for j, e := range va.Allow {
			e.Namespaces = append([]string(nil), e.Namespaces...)
			allow[j] = e
		}
		if va.Allow == nil {
			allow = nil
		}
		va.Allow = allow
		p.Rules[i] = r
	}
	return &p
}

func clonePtr[T any](v *T) *T {
	if v == nil {
		return nil
	}
	c := *v
	return &c
}

// Policies returns the policies of the set in their given order. Callers must not modify them.
func (s *Set) Policies() []*Policy { return s.policies }

// Hash is a stable hash of everything that affects decisions (kinds, names, namespaces,
// patterns in order, checks, effective modes, fail_open, running and evictAfter); sources and
// warnings are left out, so moving a policy between files keeps the hash.
func (s *Set) Hash() string { return s.hash }

func hashPolicies(ps []*Policy) string {
	type hashed struct {
		Kind      Kind
		Name      string
		Namespace string
		Mode      Mode
		Rules     []Rule
	}
	h := sha256.New()
	enc := json.NewEncoder(h)
	for _, p := range ps {
		// Encoding plain structs cannot fail.
		_ = enc.Encode(hashed{p.Kind, p.Name, p.Namespace, p.Mode, p.Rules})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Match finds the rule that applies to image in namespace ("" = cluster policies only). If
// the namespace has any ImagePolicy, only those apply; otherwise the ClusterImagePolicies do.
// Among matching rules an exact pattern wins, then the most specific wildcard. A nil Rule
// means deny, with the reason in Reason. The error is only for an unparsable image name and
// wraps ErrInvalidImage.
func (s *Set) Match(namespace, image string) (*Match, error) {
	img, err := NormalizeImage(image)
	if err != nil {
		return nil, err
	}
	m := &Match{Image: img, Namespace: namespace}
	scope := s.cluster
	m.Scope = KindCluster
	if ns := s.byNS[namespace]; namespace != "" && len(ns) > 0 {
		scope, m.Scope = ns, KindNamespace
	}
	if len(scope) == 0 {
		m.Scope = ""
		m.Reason = "no image policies or cluster policies for " + img.String()
		return m, nil
	}
	var best *pattern
	var empty []string
	for _, cp := range scope {
		m.Policies = append(m.Policies, cp.p)
		if len(cp.p.Rules) == 0 {
			empty = append(empty, cp.p.String())
		}
		for i, pat := range cp.rules {
			if pat.matches(img) && (best == nil || pat.moreSpecific(best)) {
				best, m.Policy, m.Rule = pat, cp.p, &cp.p.Rules[i]
			}
		}
	}
	if m.Rule != nil {
		return m, nil
	}
	switch {
	case len(empty) == len(scope) && len(empty) == 1:
		m.Reason = fmt.Sprintf("policy %s has an empty repositories list", empty[0])
	case len(empty) == len(scope):
		m.Reason = fmt.Sprintf("policies %s have empty repositories lists", strings.Join(empty, ", "))
	default:
		names := make([]string, len(m.Policies))
		for i, p := range m.Policies {
			names[i] = p.String()
		}
		m.Reason = fmt.Sprintf("no repository in %s matches %s", strings.Join(names, ", "), img.String())
	}
	return m, nil
}
