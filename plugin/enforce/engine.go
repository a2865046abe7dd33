package enforce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/distribution/reference"

	"github.com/pullguard/pullguard/plugin/policy"
	"github.com/pullguard/pullguard/plugin/registry"
)

// Options configure an Engine.
type Options struct {
	Logger *slog.Logger
	// Timeout bounds one decision, registry calls included. kubelet pulls
	// serially, so a slow decision stalls every pull on the node.
	Timeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Observer, if set, sees every decision (metrics).
	Observer Observer

	// Registry opens image repositories; nil means rules with checks deny.
	Registry RepositoryOpener
	// NodeCredentials are the node's own registry credentials, used for a
	// registry the request brought none for (create-time checks).
	NodeCredentials registry.CredentialFunc
	// Trust verifies signatures; nil means no signers are configured.
	Trust TrustVerifier
	// Facts caches trust facts and scan reports by content; nil verifies
	// every time.
	Facts FactsCache

	// Background verifies what decisions from cached facts found missing;
	// nil verifies nothing in the background.
	Background *Background

	// Reports finds scan reports; nil means rules with va deny.
	Reports    ReportSource
	VADefaults VADefaults
}

// Observer is told of every decision, after it is made.
type Observer interface {
	ObserveDecision(d *Decision)
}

// Engine decides. It is safe for concurrent use; policies can be swapped
// while decisions are in flight (each decision uses one snapshot).
type Engine struct {
	opts     Options
	log      *slog.Logger
	policies atomic.Pointer[policy.Set]
}

// New returns an Engine deciding with set.
func New(set *policy.Set, opts Options) *Engine {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	e := &Engine{opts: opts, log: opts.Logger}
	e.policies.Store(set)
	return e
}

// SetPolicies replaces the policy set for decisions that start afterwards.
func (e *Engine) SetPolicies(set *policy.Set) { e.policies.Store(set) }

// Policies returns the set in force.
func (e *Engine) Policies() *policy.Set { return e.policies.Load() }

// Decide evaluates req and writes one audit log line.
func (e *Engine) Decide(ctx context.Context, req Request) *Decision {
	start := e.opts.Now()
	dctx, cancel := context.WithTimeout(ctx, e.opts.Timeout)
	defer cancel()

	d := e.decide(dctx, req)
	if d.FailedOpen && ctx.Err() != nil {
		// The caller gave up, not the registry: fail_open is for a
		// registry that cannot be reached, never for a client's deadline.
		d.Verdict, d.FailedOpen = Deny, false
		d.Reason += " (the caller's deadline ended the decision; fail_open does not apply)"
	}
	d.Latency = e.opts.Now().Sub(start)
	e.audit(dctx, d)
	if e.opts.Observer != nil {
		e.opts.Observer.ObserveDecision(d)
	}
	return d
}

func (e *Engine) decide(ctx context.Context, req Request) *Decision {
	set := e.policies.Load()
	d := &Decision{Op: req.Op, Namespace: req.Namespace, Image: req.Image, Digest: req.Digest, ImageID: req.ImageID}
	if set == nil {
		return d.deny(SignatureValidationFailed, "no policies are loaded")
	}
	d.PolicyHash = set.Hash()

	m, err := set.Match(req.Namespace, req.Image)
	if err != nil {
		if errors.Is(err, policy.ErrInvalidImage) {
			return d.deny(InvalidImage, err.Error())
		}
		return d.deny(SignatureValidationFailed, fmt.Sprintf("match policies: %v", err))
	}
	if m.Image != nil {
		d.Image = m.Image.String()
	}
	if m.Policy != nil {
		d.Policy = describePolicy(m.Policy)
	}
	if m.Rule == nil {
		return d.deny(SignatureValidationFailed, m.Reason)
	}
	d.Rule = m.Rule.Name
	d.Running, d.EvictAfter = m.Rule.Running, m.Rule.EvictAfter
	audit := m.Rule.Mode == policy.ModeAudit

	f := e.check(ctx, req, m, d)
	if f == nil {
		d.Verdict = Admit
		return d
	}
	d.deny(f.category, f.reason)
	d.NotVerified = f.notVerified
	switch {
	case f.notVerified:
		// Nothing was decided yet: neither audit nor fail_open may admit
		// what nobody has looked at; the background verification will.
	case f.category == RegistryUnavailable && m.Rule.FailOpen:
		// Availability-first namespaces opt into this; the audit line and
		// the decision say so loudly.
		d.Verdict = Admit
		d.FailedOpen = true
	case audit:
		// Audit mode decides and reports, never blocks.
		d.Verdict = Admit
		d.Audited = true
	}
	return d
}

// check runs the checks the matched rule requires; nil means they pass.
func (e *Engine) check(ctx context.Context, req Request, m *policy.Match, d *Decision) *failure {
	c := m.Rule.Checks
	if c.None() {
		d.Reason = "the rule requires no checks"
		return nil
	}
	s, f := e.resolve(ctx, req, m.Image)
	if f != nil {
		return f
	}
	d.Digest = s.desc.Digest.String()
	var passed []string
	// The scan report is looked for while the signatures are checked: the
	// two are independent, and each is several registry round trips. Only a
	// resolved subject is shared (a lazy one is completed by whichever check
	// needs it first).
	var (
		vaDone chan struct{}
		vaFail *failure
		vaD    Decision
	)
	if c.Trust.Enabled && c.VA.Enabled && s.src != nil && !s.lazy {
		vaDone = make(chan struct{})
		go func() {
			defer close(vaDone)
			vaFail = e.checkVA(ctx, req, s, c.VA, &vaD)
		}()
	}
	if c.Trust.Enabled {
		f := e.checkTrust(ctx, s, c.Trust.Signers, d)
		if vaDone != nil {
			<-vaDone
		}
		if f != nil {
			return f
		}
		passed = append(passed, "signatures verified")
	}
	if c.VA.Enabled {
		f := vaFail
		if vaDone != nil {
			d.Details = append(d.Details, vaD.Details...)
			d.VA, d.Unscanned = vaD.VA, vaD.Unscanned
		} else {
			f = e.checkVA(ctx, req, s, c.VA, d)
		}
		if f != nil {
			return f
		}
		if d.Unscanned {
			passed = append(passed, "no vulnerability scan report found (admitted: unscanned = allow)")
		} else {
			passed = append(passed, "vulnerability assessment passed")
		}
	}
	// Only a pull is made pinned: other decisions are on content already
	// named by its digest.
	if req.Op == OpPull || req.Op == OpCheck {
		if pinned, err := reference.WithDigest(s.repo, s.desc.Digest); err == nil {
			d.PinnedRef = pinned.String()
		}
	}
	d.Reason = joinAnd(passed)
	return nil
}

func (d *Decision) deny(cat Category, reason string) *Decision {
	d.Verdict = Deny
	d.Category = cat
	d.Reason = reason
	return d
}

func describePolicy(p *policy.Policy) string {
	name := p.Name
	if p.Kind == policy.KindNamespace && p.Namespace != "" {
		name = p.Namespace + "/" + p.Name
	}
	s := fmt.Sprintf("%s %s", p.Kind, name)
	if p.Source != "" {
		s += " (" + p.Source + ")"
	}
	return s
}

func joinAnd(items []string) string {
	switch len(items) {
	case 0:
		return ""
	case 1:
		return items[0]
	}
	out := ""
	for i, s := range items {
		switch {
		case i == 0:
			out = s
		case i == len(items)-1:
			out += " and " + s
		default:
			out += ", " + s
		}
	}
	return out
}
