package nri

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distribution/reference"
	crierrors "k8s.io/cri-api/pkg/errors"

	"github.com/pullguard/pullguard/plugin/enforce"
	"github.com/pullguard/pullguard/plugin/nodeimages"
)

// SandboxDecider decides on content on the node and, before the sandbox
// image is on it, on a name in its registry.
type SandboxDecider interface {
	Decider
	Decide(ctx context.Context, req enforce.Request) *enforce.Decision
}

// SandboxImages is what the gate reads of containerd's image records.
type SandboxImages interface {
	ByName(ctx context.Context, name string, maxAge time.Duration) (nodeimages.Ref, bool, error)
	ByTarget(ctx context.Context, digest string) ([]nodeimages.Ref, error)
	Pinned(ctx context.Context, maxAge time.Duration) ([]nodeimages.Ref, error)
	ImageIDs(target string) []string
}

// sandboxFreshness is how old containerd's records may be when a sandbox
// starts: reading them again costs one local List call.
const sandboxFreshness = 2 * time.Second

// SandboxGate decides the sandbox (pause) image containerd runs for every
// pod, under the cluster policy, ahead of the pods: containerd pulls it by
// itself and never asks NRI to validate a sandbox, so the verdict must be
// ready when RunPodSandbox arrives, to be answered at once. The images
// decided are the configured sandbox image and every image containerd's CRI
// labels as pinned, which is how it marks the one it actually uses.
type SandboxGate struct {
	name    string // normalised configured sandbox image ("" = only pinned ones)
	images  SandboxImages
	log     *slog.Logger
	decider atomic.Pointer[sandboxBox]

	mu       sync.Mutex
	verdicts map[string]*enforce.Decision // by target digest
	at       time.Time                    // when they were made
	running  bool
	now      func() time.Time
}

// sandboxRetry is how soon a denied sandbox image is decided again when a
// pod asks, so that a newly signed or scanned image is admitted at kubelet's
// next try rather than at the periodic decision. That decision is made from
// cached facts (no registry is waited on inside containerd's call; missing
// facts are verified in the background for the try after), so it is cheap:
// the bound only keeps a burst of pods from each writing an audit line.
const sandboxRetry = time.Second

type sandboxBox struct{ d SandboxDecider }

// NewSandboxGate returns a gate for the sandbox image name (as containerd's
// pinned_images.sandbox names it).
func NewSandboxGate(name string, d SandboxDecider, images SandboxImages, log *slog.Logger) (*SandboxGate, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &SandboxGate{images: images, log: log, verdicts: map[string]*enforce.Decision{}, now: time.Now}
	if name != "" {
		n, err := reference.ParseNormalizedNamed(name)
		if err != nil {
			return nil, fmt.Errorf("sandbox image %q: %w", name, err)
		}
		g.name = reference.TagNameOnly(n).String()
	}
	g.SetDecider(d)
	return g, nil
}

// SetDecider swaps the engine; the verdicts are made again by Refresh.
func (g *SandboxGate) SetDecider(d SandboxDecider) { g.decider.Store(&sandboxBox{d}) }

// targets returns the digests containerd's sandbox images target now.
func (g *SandboxGate) targets(ctx context.Context) ([]string, error) {
	var out []string
	if g.name != "" {
		r, ok, err := g.images.ByName(ctx, g.name, sandboxFreshness)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, r.Target)
		}
	}
	pinned, err := g.images.Pinned(ctx, sandboxFreshness)
	if err != nil {
		return nil, err
	}
	for _, r := range pinned {
		if !slices.Contains(out, r.Target) {
			out = append(out, r.Target)
		}
	}
	return out, nil
}

// AdmitSandbox answers from the verdicts already made. A denial older than
// sandboxRetry is decided again from cached facts first; content not
// decided yet is refused while it is decided in the background.
func (g *SandboxGate) AdmitSandbox(ctx context.Context) error {
	tgts, err := g.targets(ctx)
	if err != nil {
		return fmt.Errorf("%w: pullguard could not read containerd's sandbox image: %v", crierrors.ErrSignatureValidationFailed, err)
	}
	if len(tgts) == 0 {
		return fmt.Errorf("%w: pullguard cannot tell which sandbox image containerd runs: %q is not on the node and no image is pinned", crierrors.ErrSignatureValidationFailed, g.name)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, t := range tgts {
		d, ok := g.verdicts[t]
		if !ok {
			g.refreshLocked(context.WithoutCancel(ctx))
			return fmt.Errorf("%w: pullguard has not decided the sandbox image %s (%s) yet; it is deciding it now, and a retry is decided on the result", crierrors.ErrSignatureValidationFailed, g.name, t)
		}
		if d.Denied() && g.now().Sub(g.at) > sandboxRetry {
			if again, err := g.decideTarget(ctx, g.decider.Load().d, t, true); err == nil {
				d = again
				g.verdicts[t], g.at = d, g.now()
			}
		}
		if d.Denied() {
			return fmt.Errorf("pod sandbox refused: the sandbox image is not admitted by the cluster policy: %s", d.Message())
		}
	}
	return nil
}

// Refresh decides the sandbox images again (at start, on a config change,
// and when a sandbox finds one undecided), in the background.
func (g *SandboxGate) Refresh(ctx context.Context) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.refreshLocked(ctx)
}

func (g *SandboxGate) refreshLocked(ctx context.Context) {
	if g.running {
		return
	}
	g.running = true
	go func() {
		verdicts := g.decideAll(ctx)
		g.mu.Lock()
		g.verdicts, g.at = verdicts, g.now()
		g.running = false
		g.mu.Unlock()
	}()
}

// Decide decides the sandbox images now, and waits (tests, start-up).
func (g *SandboxGate) Decide(ctx context.Context) {
	v := g.decideAll(ctx)
	g.mu.Lock()
	g.verdicts, g.at = v, g.now()
	g.mu.Unlock()
}

func (g *SandboxGate) decideAll(ctx context.Context) map[string]*enforce.Decision {
	d := g.decider.Load().d
	out := map[string]*enforce.Decision{}
	tgts, err := g.targets(ctx)
	if err != nil {
		g.log.Warn("sandbox image not decided: containerd's records could not be read", "error", err)
		return out
	}
	for _, t := range tgts {
		dec, err := g.decideTarget(ctx, d, t, false)
		if err != nil {
			g.log.Warn("sandbox image not decided", "target", t, "error", err)
			continue
		}
		out[t] = dec
	}
	if len(tgts) == 0 && g.name != "" {
		// Not on the node yet: containerd will pull it at the first pod.
		// Decided on what the registry holds under the name now; a tag
		// moved before containerd pulls it is undecided, and refused.
		dec := d.Decide(ctx, enforce.Request{Op: enforce.OpSandbox, Image: g.name})
		if dec.Digest != "" {
			out[dec.Digest] = dec
		} else if dec.Denied() {
			g.log.Warn("sandbox image denied before it is on the node", "image", g.name, "reason", dec.Reason)
		}
	}
	return out
}

// decideTarget decides the sandbox image content t under every name
// containerd records for it. cachedOnly decides from established facts,
// fetching nothing (inside containerd's call).
func (g *SandboxGate) decideTarget(ctx context.Context, d SandboxDecider, t string, cachedOnly bool) (*enforce.Decision, error) {
	refs, err := g.images.ByTarget(ctx, t)
	if err != nil {
		return nil, err
	}
	img := enforce.NodeImage{Refs: make([]enforce.NodeRef, len(refs))}
	if ids := g.images.ImageIDs(t); len(ids) > 0 {
		img.ID = ids[0]
	}
	for i, r := range refs {
		img.Refs[i] = enforce.NodeRef{Name: r.Name, Digest: r.Target}
	}
	return d.DecideNode(ctx, enforce.NodeRequest{Op: enforce.OpSandbox, Image: img, CachedOnly: cachedOnly}), nil
}

// Verdicts returns the current decisions, by target digest (status, tests).
func (g *SandboxGate) Verdicts() map[string]*enforce.Decision {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[string]*enforce.Decision, len(g.verdicts))
	for k, v := range g.verdicts {
		out[k] = v
	}
	return out
}
