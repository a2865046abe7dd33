// Package nri is pullguard's gate inside containerd: an NRI plugin that
// containerd's default validator requires, asked about every container
// containerd creates. It decides on what containerd itself reports, never on
// a CRI client's strings: the pod's namespace from containerd's sandbox
// store, and the image ID (config digest) containerd will run, mapped to the
// names containerd records for it. Decisions are answered from facts already
// established, within a deadline of pullguard's own, because every NRI call
// on the node waits behind the one in progress and a plugin that times out
// is dropped (and, being required, then blocks every create).
package nri

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	crierrors "k8s.io/cri-api/pkg/errors"

	"github.com/pullguard/pullguard/plugin/enforce"
	"github.com/pullguard/pullguard/plugin/nodeimages"
)

// DefaultName is the plugin name containerd's required_plugins must list.
const DefaultName = "pullguard"

// DefaultIndex orders pullguard among NRI plugins; validators all run after
// every adjusting plugin whatever their index.
const DefaultIndex = "10"

// Decider is the decision engine, as the plugin uses it.
type Decider interface {
	DecideNode(ctx context.Context, req enforce.NodeRequest) *enforce.Decision
}

// Images maps containerd's image IDs and target digests to the names it
// records.
type Images interface {
	ByImageID(ctx context.Context, id string) ([]nodeimages.Ref, error)
	ByTarget(ctx context.Context, digest string) ([]nodeimages.Ref, error)
}

// Sandboxes answers whether new pod sandboxes may start (their pause image
// is decided ahead of time).
type Sandboxes interface {
	AdmitSandbox(ctx context.Context) error
}

// Tracker is told which containers run, for re-deciding them later. Calls
// must return at once: they are made inside containerd's NRI calls.
type Tracker interface {
	Synchronized(pods []*api.PodSandbox, containers []*api.Container)
	Started(pod *api.PodSandbox, ctr *api.Container)
	Stopped(ctr *api.Container)
	Removed(ctr *api.Container)
}

// Options configure a Plugin.
type Options struct {
	// SocketPath is containerd's NRI socket.
	SocketPath string
	Name       string // default DefaultName
	Index      string // default DefaultIndex
	// Deadline bounds one answer; it must stay well under containerd's
	// plugin_request_timeout. Default 1s.
	Deadline time.Duration
	// ImageVolumeDir is containerd CRI's image-volume directory
	// (<CRI state dir>/image-volumes): bind mounts from below it are image
	// volumes, decided by the digest their path names.
	ImageVolumeDir string
	Logger         *slog.Logger
	// Sandboxes and Tracker are optional.
	Sandboxes Sandboxes
	Tracker   Tracker
	// SlowDown delays every container decision (tests only: it is how the
	// tests make a decision outlive containerd's timeout on demand).
	SlowDown time.Duration
}

// Plugin is the NRI validator. Run keeps it registered.
type Plugin struct {
	opts   Options
	log    *slog.Logger
	images Images

	decider    atomic.Pointer[deciderBox]
	registered atomic.Bool
	regMu      sync.Mutex
	regCh      chan struct{} // closed when registered, replaced when lost
}

type deciderBox struct{ d Decider }

// New returns a Plugin deciding with d on images.
func New(d Decider, images Images, opts Options) *Plugin {
	if opts.Name == "" {
		opts.Name = DefaultName
	}
	if opts.Index == "" {
		opts.Index = DefaultIndex
	}
	if opts.Deadline <= 0 {
		opts.Deadline = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Plugin{opts: opts, log: opts.Logger, images: images, regCh: make(chan struct{})}
	p.SetDecider(d)
	return p
}

// SetDecider swaps the decision engine (a reloaded config).
func (p *Plugin) SetDecider(d Decider) { p.decider.Store(&deciderBox{d}) }

// Registered reports whether containerd currently has the plugin registered.
func (p *Plugin) Registered() bool { return p.registered.Load() }

// WaitRegistered blocks until the plugin is registered or ctx ends.
func (p *Plugin) WaitRegistered(ctx context.Context) error {
	for {
		p.regMu.Lock()
		ch, ok := p.regCh, p.registered.Load()
		p.regMu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (p *Plugin) setRegistered(ok bool) {
	p.regMu.Lock()
	defer p.regMu.Unlock()
	if p.registered.Swap(ok) == ok {
		return
	}
	if ok {
		close(p.regCh)
	} else {
		p.regCh = make(chan struct{})
	}
}

// Reconnect delays: a dropped plugin makes containerd refuse every create
// until it is back, so it retries quickly, but not in a tight loop while
// containerd is down.
const (
	minRetry = 50 * time.Millisecond
	maxRetry = time.Second
)

// Run registers with containerd and re-registers whenever the connection
// is lost (containerd restarted: the stub's Run returns and no Shutdown
// event arrives), until ctx ends.
func (p *Plugin) Run(ctx context.Context) error {
	delay := minRetry
	for {
		began := time.Now()
		err := p.runOnce(ctx)
		p.setRegistered(false)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(began) > 5*time.Second {
			delay = minRetry // it was up for a while: start the backoff again
		}
		p.log.Warn("NRI connection lost; creates are refused until pullguard is registered again",
			"socket", p.opts.SocketPath, "retry_in", delay.String(), "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(delay*2, maxRetry)
	}
}

func (p *Plugin) runOnce(ctx context.Context) error {
	s, err := stub.New(&handler{p: p},
		stub.WithPluginName(p.opts.Name),
		stub.WithPluginIdx(p.opts.Index),
		stub.WithSocketPath(p.opts.SocketPath),
		stub.WithLogger(nriLogger{p.log}),
	)
	if err != nil {
		return fmt.Errorf("create NRI stub: %w", err)
	}
	err = s.Run(ctx)
	s.Stop()
	if err == nil {
		err = errors.New("connection closed")
	}
	return err
}

// handler carries the stub's callbacks; the stub subscribes to exactly the
// events it implements. CreateContainer is deliberately not among them: a
// timeout there lets the container through, while a validator's timeout
// fails the create.
type handler struct{ p *Plugin }

// Synchronize is the first call after registration.
func (h *handler) Synchronize(_ context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	h.p.log.Info("registered with containerd's NRI", "name", h.p.opts.Index+"-"+h.p.opts.Name, "pods", len(pods), "containers", len(ctrs))
	if t := h.p.opts.Tracker; t != nil {
		t.Synchronized(pods, ctrs)
	}
	h.p.setRegistered(true)
	return nil, nil
}

// Shutdown: containerd is stopping the plugin.
func (h *handler) Shutdown(context.Context) {
	h.p.setRegistered(false)
}

// RunPodSandbox refuses a sandbox whose pause image is not admitted: NRI
// never validates sandboxes, but an error here makes containerd tear the new
// sandbox down. It must answer at once (a timeout lets the sandbox through).
func (h *handler) RunPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	sb := h.p.opts.Sandboxes
	if sb == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, h.p.opts.Deadline)
	defer cancel()
	if err := sb.AdmitSandbox(ctx); err != nil {
		h.p.log.Warn("pod sandbox refused", "namespace", pod.GetNamespace(), "pod", pod.GetName(), "error", err)
		return err
	}
	return nil
}

// PostStartContainer, StopContainer and RemoveContainer keep the tracker's
// view of running containers current; they answer at once.
func (h *handler) PostStartContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	if t := h.p.opts.Tracker; t != nil {
		t.Started(pod, ctr)
	}
	return nil
}

func (h *handler) StopContainer(_ context.Context, _ *api.PodSandbox, ctr *api.Container) ([]*api.ContainerUpdate, error) {
	if t := h.p.opts.Tracker; t != nil {
		t.Stopped(ctr)
	}
	return nil, nil
}

func (h *handler) RemoveContainer(_ context.Context, _ *api.PodSandbox, ctr *api.Container) error {
	if t := h.p.opts.Tracker; t != nil {
		t.Removed(ctr)
	}
	return nil
}

// ValidateContainerAdjustment decides every container containerd creates:
// its image and its image volumes, for the pod's namespace.
func (h *handler) ValidateContainerAdjustment(ctx context.Context, req *api.ValidateContainerAdjustmentRequest) error {
	return h.p.validate(ctx, req.GetPod(), req.GetContainer(), req.GetAdjust())
}

// validate answers within the deadline: a decision that would outlive it
// refuses the create rather than let containerd drop the plugin.
func (p *Plugin) validate(ctx context.Context, pod *api.PodSandbox, ctr *api.Container, adj *api.ContainerAdjustment) error {
	ctx, cancel := context.WithTimeout(ctx, p.opts.Deadline)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		if p.opts.SlowDown > 0 {
			select {
			case <-time.After(p.opts.SlowDown):
			case <-ctx.Done():
			}
		}
		done <- p.decide(ctx, pod, ctr, adj)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		p.log.Error("create refused: no decision within the deadline", "namespace", pod.GetNamespace(), "pod", pod.GetName(),
			"container", ctr.GetName(), "deadline", p.opts.Deadline.String())
		return fmt.Errorf("%w: pullguard could not decide on container %q of pod %s/%s within %s; retry", crierrors.ErrSignatureValidationFailed, ctr.GetName(), pod.GetNamespace(), pod.GetName(), p.opts.Deadline)
	}
}

func (p *Plugin) decide(ctx context.Context, pod *api.PodSandbox, ctr *api.Container, adj *api.ContainerAdjustment) error {
	// containerd's sandbox store has the namespace of every kubelet pod; a
	// sandbox without one is decided by the cluster policy, like a pull
	// without a pod.
	ns := pod.GetNamespace()
	d := p.decider.Load().d
	id := ctr.GetImage().GetConfigDigest()
	if id == "" {
		return fmt.Errorf("%w: pullguard refused container %q of pod %s/%s: containerd did not say which image it runs", crierrors.ErrSignatureValidationFailed, ctr.GetName(), ns, pod.GetName())
	}
	refs, err := p.images.ByImageID(ctx, id)
	if err != nil {
		return fmt.Errorf("%w: pullguard could not look up image %s in containerd for namespace %q: %v", crierrors.ErrSignatureValidationFailed, id, ns, err)
	}
	dec := d.DecideNode(ctx, enforce.NodeRequest{Op: enforce.OpCreate, Namespace: ns, Image: nodeImage(id, refs), CachedOnly: true})
	if dec.Denied() {
		return errors.New(createMessage(dec))
	}
	mounts := append(append([]*api.Mount(nil), ctr.GetMounts()...), adj.GetMounts()...)
	for _, m := range mounts {
		dg, isVolume, err := p.imageVolumeDigest(m)
		if !isVolume {
			continue
		}
		if err != nil {
			return fmt.Errorf("%w: pullguard refused container %q of pod %s/%s: image volume at %s cannot be identified: %v", crierrors.ErrSignatureValidationFailed, ctr.GetName(), ns, pod.GetName(), m.GetDestination(), err)
		}
		refs, err := p.images.ByTarget(ctx, dg)
		if err != nil {
			return fmt.Errorf("%w: pullguard could not look up image volume %s in containerd for namespace %q: %v", crierrors.ErrSignatureValidationFailed, dg, ns, err)
		}
		dec := d.DecideNode(ctx, enforce.NodeRequest{Op: enforce.OpCreate, Namespace: ns, Image: nodeImage("", refs), CachedOnly: true})
		if dec.Denied() {
			return fmt.Errorf("image volume at %s: %s", m.GetDestination(), createMessage(dec))
		}
	}
	return nil
}

// createMessage is the denial text containerd hands to kubelet, which shows
// it as the pod's CreateContainerError.
func createMessage(d *enforce.Decision) string {
	msg := d.Message()
	if d.NotVerified {
		return msg
	}
	if d.Category == enforce.SignatureValidationFailed {
		msg += "; the image must be admitted where it runs: fix the image (sign or scan it) or the namespace's policy; with imagePullPolicy: Always each start pulls it through pullguard"
	}
	return msg
}

func nodeImage(id string, refs []nodeimages.Ref) enforce.NodeImage {
	img := enforce.NodeImage{ID: id, Refs: make([]enforce.NodeRef, len(refs))}
	for i, r := range refs {
		img.Refs[i] = enforce.NodeRef{Name: r.Name, Digest: r.Target}
	}
	return img
}

// imageVolumeDigest recognises a bind mount from containerd's image-volume
// directory (<dir>/<sandbox id>/<manifest digest hex>[/subpath]) and returns
// the digest it names. A mount that looks like one but does not parse is an
// image volume that cannot be identified: refused, never ignored.
func (p *Plugin) imageVolumeDigest(m *api.Mount) (string, bool, error) {
	src := filepath.Clean(m.GetSource())
	dir := p.opts.ImageVolumeDir
	var rel string
	switch {
	case dir != "" && strings.HasPrefix(src, filepath.Clean(dir)+"/"):
		rel = strings.TrimPrefix(src, filepath.Clean(dir)+"/")
	case strings.Contains(src, "/io.containerd.grpc.v1.cri/image-volumes/"):
		// Another containerd state directory than the one configured: still
		// an image volume, so decided the same way.
		_, rel, _ = strings.Cut(src, "/io.containerd.grpc.v1.cri/image-volumes/")
	default:
		return "", false, nil
	}
	parts := strings.Split(rel, "/")
	if len(parts) < 2 || parts[0] == "" {
		return "", true, fmt.Errorf("mount source %s has no sandbox and digest", src)
	}
	hex := parts[1]
	if len(hex) != 64 || strings.Trim(hex, "0123456789abcdef") != "" {
		return "", true, fmt.Errorf("mount source %s does not name a sha256 digest", src)
	}
	return "sha256:" + hex, true, nil
}

// nriLogger routes the NRI stub's logs into slog.
type nriLogger struct{ l *slog.Logger }

func (n nriLogger) Debugf(ctx context.Context, f string, a ...any) {
	n.l.DebugContext(ctx, "nri: "+fmt.Sprintf(f, a...))
}
func (n nriLogger) Infof(ctx context.Context, f string, a ...any) {
	n.l.DebugContext(ctx, "nri: "+fmt.Sprintf(f, a...))
}
func (n nriLogger) Warnf(ctx context.Context, f string, a ...any) {
	n.l.WarnContext(ctx, "nri: "+fmt.Sprintf(f, a...))
}
func (n nriLogger) Errorf(ctx context.Context, f string, a ...any) {
	n.l.ErrorContext(ctx, "nri: "+fmt.Sprintf(f, a...))
}
