package enforce

import (
	"context"
	"log/slog"
	"sync"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// NodeImage is content on the node as containerd records it: the image ID
// it runs (its config digest; "" for an image volume, which is decided by
// its digest) and every name containerd holds for it, each with the digest
// of the manifest or index that name's record targets.
type NodeImage struct {
	ID   string
	Refs []NodeRef
}

// NodeRef is one name containerd holds for a NodeImage.
type NodeRef struct {
	Name   string
	Digest string
}

// NodeRequest asks about content on the node.
type NodeRequest struct {
	Op        Operation
	Namespace string // "" = the cluster policy
	Image     NodeImage
	// CachedOnly decides from established facts only (inside containerd's
	// container creation); missing facts are verified in the background.
	CachedOnly bool
	// Fresh establishes the facts again from the registry.
	Fresh bool
	// Quiet writes no audit line and tells no observer: the caller reports
	// what changed (re-decisions of running containers).
	Quiet bool
}

// maxNodeRefs bounds the names one image is decided under.
const maxNodeRefs = 32

// DecideNode decides on content the node holds, under each name containerd
// records for it. The content is admitted when it is admitted under one of
// them: which name a pod meant is unknown (the request's string is the
// client's, not containerd's), and every name's digest is content-addressed,
// so a name can only choose which repository's policy and signatures apply,
// never what runs. One audit line is written.
func (e *Engine) DecideNode(ctx context.Context, req NodeRequest) *Decision {
	start := e.opts.Now()
	ctx, cancel := context.WithTimeout(ctx, e.opts.Timeout)
	defer cancel()

	var (
		best    *Decision
		pending []Request
	)
	tried := 0
	for _, r := range req.Image.Refs {
		name, ok := nodeName(r)
		if !ok {
			continue // a bare image ID as a name: no repository to match
		}
		if tried == maxNodeRefs {
			break
		}
		tried++
		one := Request{Op: req.Op, Namespace: req.Namespace, Image: name, Digest: r.Digest, ImageID: req.Image.ID, CachedOnly: req.CachedOnly, Fresh: req.Fresh}
		d := e.decide(ctx, one)
		if d.NotVerified {
			pending = append(pending, one)
			if why := e.opts.Background.lastFailure(backgroundKey(one)); why != "" {
				d.Reason += "; the last attempt failed: " + why
			}
		}
		if best == nil || rank(d) > rank(best) {
			best = d
		}
		if rank(best) == rankAdmitted {
			break
		}
	}
	if best == nil {
		best = &Decision{Op: req.Op, Namespace: req.Namespace, ImageID: req.Image.ID, Image: req.Image.ID}
		if len(req.Image.Refs) > 0 {
			best.Image = req.Image.Refs[0].Name
			best.Digest = req.Image.Refs[0].Digest
		}
		best.deny(SignatureValidationFailed, "containerd holds no image name for this content that a policy can match (was it imported without a name?)")
	}
	if best.Denied() || best.Audited || best.FailedOpen {
		for _, p := range pending {
			e.verifyLater(p)
		}
	}
	best.Latency = e.opts.Now().Sub(start)
	if req.Quiet {
		return best
	}
	e.audit(ctx, best)
	if e.opts.Observer != nil {
		e.opts.Observer.ObserveDecision(best)
	}
	return best
}

const (
	rankDenied = iota
	rankNotVerified
	rankAdmittedLoosely // audit mode or fail_open
	rankAdmitted
)

// rank orders the decisions under several names: an admission beats a
// denial, and "not verified yet" beats a final denial because the retry may
// pass.
func rank(d *Decision) int {
	switch {
	case d.Denied() && d.NotVerified:
		return rankNotVerified
	case d.Denied():
		return rankDenied
	case d.Audited || d.FailedOpen:
		return rankAdmittedLoosely
	}
	return rankAdmitted
}

// nodeName is the name to match policies with: the record's name, with a
// digest it carries replaced by the digest the record actually targets (a
// record named repo@X may point at other content: it is that content which
// runs).
func nodeName(r NodeRef) (string, bool) {
	// containerd's CRI records every image under its ID too ("sha256:<config digest>"). That
	// is no repository, yet it parses as one (docker.io/library/sha256, tag <hex>).
	if _, err := digest.Parse(r.Name); err == nil {
		return "", false
	}
	n, err := reference.ParseNormalizedNamed(r.Name)
	if err != nil {
		return "", false
	}
	if _, ok := n.(reference.Digested); !ok {
		return n.String(), true
	}
	pinned, err := reference.ParseNormalizedNamed(reference.TrimNamed(n).String() + "@" + r.Digest)
	if err != nil {
		return "", false
	}
	return pinned.String(), true
}

// verifyLater establishes in the background the facts a decision from
// cached facts lacked, with the node's own credentials.
func (e *Engine) verifyLater(req Request) {
	bg := e.opts.Background
	if bg == nil {
		return
	}
	key := backgroundKey(req)
	req.Op, req.CachedOnly = OpVerify, false
	bg.Go(key, func(ctx context.Context) {
		start := e.opts.Now()
		ctx, cancel := context.WithTimeout(ctx, e.opts.Timeout)
		defer cancel()
		d := e.decide(ctx, req)
		d.Latency = e.opts.Now().Sub(start)
		e.audit(ctx, d)
		// A verification that could not establish the facts (the registry
		// unreachable, the content not found there) leaves nothing in the
		// cache: its reason is kept for the next decision to show.
		why := ""
		if d.Denied() && (d.Category == RegistryUnavailable || !e.factsKnown(req)) {
			why = d.Reason
		}
		bg.setFailure(key, why)
	})
}

func backgroundKey(req Request) string {
	return req.Namespace + "\x00" + req.Image + "\x00" + req.Digest
}

// factsKnown reports whether a decision from cached facts can now be made
// for req.
func (e *Engine) factsKnown(req Request) bool {
	req.CachedOnly = true
	return !e.decide(context.Background(), req).NotVerified
}

// Background runs verifications that decisions from cached facts found
// missing, a bounded number at a time, each key once while in flight. It
// outlives configuration reloads.
type Background struct {
	log  *slog.Logger
	sem  chan struct{}
	max  int
	ctx  context.Context
	mu   sync.Mutex
	busy map[string]struct{}
	// failed holds why the last verification of a key established nothing,
	// at most max entries.
	failed map[string]string
	wg     sync.WaitGroup
}

// NewBackground runs at most workers verifications at once and keeps at most
// queue waiting; more are dropped (the next decision asks again). ctx ends
// them all.
func NewBackground(ctx context.Context, workers, queue int, log *slog.Logger) *Background {
	if workers <= 0 {
		workers = 4
	}
	if queue <= 0 {
		queue = 256
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Background{log: log, sem: make(chan struct{}, workers), max: queue, ctx: ctx, busy: map[string]struct{}{}, failed: map[string]string{}}
}

func (b *Background) setFailure(key, why string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if why == "" {
		delete(b.failed, key)
		return
	}
	if _, ok := b.failed[key]; !ok && len(b.failed) >= b.max {
		for k := range b.failed { // any one: a bound, not an order
			delete(b.failed, k)
			break
		}
	}
	b.failed[key] = why
}

// lastFailure is why the last verification of key established nothing, "".
func (b *Background) lastFailure(key string) string {
	if b == nil {
		return ""
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failed[key]
}

// Go runs fn for key unless a run for key is queued or running.
func (b *Background) Go(key string, fn func(ctx context.Context)) {
	b.mu.Lock()
	if _, ok := b.busy[key]; ok {
		b.mu.Unlock()
		return
	}
	if len(b.busy) >= b.max {
		b.mu.Unlock()
		b.log.Warn("background verification queue full; dropped (the next decision asks again)", "queued", b.max)
		return
	}
	b.busy[key] = struct{}{}
	b.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		defer func() {
			b.mu.Lock()
			delete(b.busy, key)
			b.mu.Unlock()
		}()
		select {
		case b.sem <- struct{}{}:
		case <-b.ctx.Done():
			return
		}
		defer func() { <-b.sem }()
		fn(b.ctx)
	}()
}

// Wait waits for every queued and running verification (tests, shutdown).
func (b *Background) Wait() { b.wg.Wait() }

// Busy is the number of queued and running verifications.
func (b *Background) Busy() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.busy)
}
