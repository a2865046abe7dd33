// Package running keeps pullguard's view of the containers running on the
// node, as containerd reports them over NRI, and re-decides them when what a
// decision rests on changes: the policies, the trust material, or the facts
// about their images (a new scan report, a revoked signature). A container
// already running is never stopped here: what happens to one whose image is
// no longer admitted is reported (audit line, metric, status), and acted on
// by the DaemonSet's agent, which has API access (Events, evictions).
package running

import (
	"context"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/nri/pkg/api"

	"github.com/pullguard/pullguard/plugin/enforce"
	"github.com/pullguard/pullguard/plugin/nodeimages"
	"github.com/pullguard/pullguard/plugin/policy"
)

// Decider re-decides a container's image.
type Decider interface {
	DecideNode(ctx context.Context, req enforce.NodeRequest) *enforce.Decision
}

// Images maps an image ID to the names containerd records for it.
type Images interface {
	ByImageID(ctx context.Context, id string) ([]nodeimages.Ref, error)
}

// Verdicts of a running container.
const (
	Admitted = "admit"
	Denied   = "deny"
	// Pending: not decided yet (its facts could not be established).
	Pending = "pending"
)

// staticSource is the annotation kubelet sets on a pod's sandbox; a pod
// from a file (a static pod) has no API object that could be evicted.
const (
	configSourceAnnotation = "kubernetes.io/config.source"
	apiSource              = "api"
)

// Pod identifies a container's pod, from containerd's sandbox store.
type Pod struct {
	ID        string `json:"id"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
	// Static pods (from a file on the node) cannot be evicted through the
	// API: they are only reported.
	Static bool `json:"static,omitempty"`
}

// Container is a running container and pullguard's current verdict on it.
type Container struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Pod      Pod       `json:"pod"`
	ImageID  string    `json:"image_id"`
	Image    string    `json:"image,omitempty"` // the name it was decided under
	Digest   string    `json:"digest,omitempty"`
	Verdict  string    `json:"verdict"`
	Reason   string    `json:"reason,omitempty"`
	Category string    `json:"category,omitempty"`
	Policy   string    `json:"policy,omitempty"`
	Rule     string    `json:"rule,omitempty"`
	Audited  bool      `json:"audit_mode,omitempty"`
	Since    time.Time `json:"since"` // when the verdict last changed
	// Action is what the matching rule asks for when the image is not
	// admitted: report, or evict (after EvictAfter).
	Action string `json:"action"`
	// EvictAt is when the agent evicts the pod, for a denied container
	// whose action is evict and nothing forbids it.
	EvictAt *time.Time `json:"evict_at,omitempty"`
	// NoEviction says why a denied container whose action is evict is only
	// reported (a protected namespace, a static pod, audit mode).
	NoEviction string `json:"no_eviction,omitempty"`
}

// Status is the node's running workloads, for `pullguard status` and the
// agent.
type Status struct {
	Time       time.Time   `json:"time"`
	Containers []Container `json:"containers"`
	// MaxEvictionsPerMinute bounds the agent's evictions on this node.
	MaxEvictionsPerMinute int `json:"max_evictions_per_minute"`
	// Synchronized is false until containerd has listed its containers.
	Synchronized bool `json:"synchronized"`
}

// Options configure a Tracker.
type Options struct {
	// RecheckInterval is how often the images of running containers are
	// verified again against their registries; default 10m.
	RecheckInterval time.Duration
	// Concurrency bounds the re-checks made at once; default 4.
	Concurrency int
	// Protected namespaces are never evicted (their images are admitted by
	// default so the node can recover).
	Protected             []string
	MaxEvictionsPerMinute int
	// Observe is told the verdict counts by namespace after each pass.
	Observe func(counts map[[2]string]int)
	Logger  *slog.Logger
	Now     func() time.Time
}

type box struct{ d Decider }

// Tracker is safe for concurrent use; its NRI callbacks return at once.
type Tracker struct {
	opts    Options
	log     *slog.Logger
	images  Images
	decider atomic.Pointer[box]
	trigger chan bool // true: re-check the registries too

	mu     sync.Mutex
	ctrs   map[string]*Container
	synced bool
}

// New returns a Tracker deciding with d.
func New(d Decider, images Images, opts Options) *Tracker {
	if opts.RecheckInterval <= 0 {
		opts.RecheckInterval = 10 * time.Minute
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	t := &Tracker{opts: opts, log: opts.Logger, images: images, trigger: make(chan bool, 1), ctrs: map[string]*Container{}}
	t.decider.Store(&box{d})
	return t
}

// SetDecider puts a reloaded engine in force and re-decides everything: the
// policies, trust stores or VA settings may have changed.
func (t *Tracker) SetDecider(d Decider) {
	t.decider.Store(&box{d})
	t.Redecide(false)
}

// Redecide asks for a pass over every running container; recheck also
// verifies their images against the registries again.
func (t *Tracker) Redecide(recheck bool) {
	select {
	case t.trigger <- recheck:
	default:
		if recheck {
			// A pass is already queued; make sure one re-checks.
			select {
			case <-t.trigger:
			default:
			}
			select {
			case t.trigger <- true:
			default:
			}
		}
	}
}

// Synchronized replaces the view with containerd's list (pullguard
// registered or re-registered).
func (t *Tracker) Synchronized(pods []*api.PodSandbox, ctrs []*api.Container) {
	byID := map[string]*api.PodSandbox{}
	for _, p := range pods {
		byID[p.GetId()] = p
	}
	t.mu.Lock()
	old := t.ctrs
	t.ctrs = map[string]*Container{}
	for _, c := range ctrs {
		if c.GetState() != api.ContainerState_CONTAINER_RUNNING {
			continue
		}
		t.ctrs[c.GetId()] = t.container(byID[c.GetPodSandboxId()], c, old[c.GetId()])
	}
	t.synced = true
	t.mu.Unlock()
	t.Redecide(false)
}

// Started adds a container containerd has just started.
func (t *Tracker) Started(pod *api.PodSandbox, ctr *api.Container) {
	t.mu.Lock()
	t.ctrs[ctr.GetId()] = t.container(pod, ctr, t.ctrs[ctr.GetId()])
	t.mu.Unlock()
	t.Redecide(false)
}

// Stopped and Removed drop a container.
func (t *Tracker) Stopped(ctr *api.Container) { t.Removed(ctr) }

// Removed drops a container.
func (t *Tracker) Removed(ctr *api.Container) {
	t.mu.Lock()
	delete(t.ctrs, ctr.GetId())
	t.mu.Unlock()
}

func (t *Tracker) container(pod *api.PodSandbox, ctr *api.Container, prev *Container) *Container {
	c := &Container{
		ID: ctr.GetId(), Name: ctr.GetName(), ImageID: ctr.GetImage().GetConfigDigest(),
		Pod: Pod{
			ID: pod.GetId(), Namespace: pod.GetNamespace(), Name: pod.GetName(), UID: pod.GetUid(),
			Static: pod.GetAnnotations()[configSourceAnnotation] != "" && pod.GetAnnotations()[configSourceAnnotation] != apiSource,
		},
		Verdict: Pending, Since: t.opts.Now(), Action: string(policy.RunningReport),
	}
	if prev != nil && prev.ImageID == c.ImageID {
		// The same container seen again (re-registration): its verdict and
		// since when it holds carry over.
		c.Verdict, c.Reason, c.Category, c.Since = prev.Verdict, prev.Reason, prev.Category, prev.Since
		c.Image, c.Digest, c.Policy, c.Rule, c.Audited = prev.Image, prev.Digest, prev.Policy, prev.Rule, prev.Audited
		c.Action, c.EvictAt, c.NoEviction = prev.Action, prev.EvictAt, prev.NoEviction
	}
	return c
}

// Run re-decides on demand and re-checks every RecheckInterval until ctx
// ends.
func (t *Tracker) Run(ctx context.Context) {
	tick := time.NewTicker(t.opts.RecheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case recheck := <-t.trigger:
			t.pass(ctx, recheck)
		case <-tick.C:
			t.pass(ctx, true)
		}
	}
}

type group struct {
	ns, imageID string
}

// pass re-decides every running container, one decision per namespace and
// image.
func (t *Tracker) pass(ctx context.Context, recheck bool) {
	t.mu.Lock()
	groups := map[group][]string{}
	for id, c := range t.ctrs {
		g := group{c.Pod.Namespace, c.ImageID}
		groups[g] = append(groups[g], id)
	}
	t.mu.Unlock()
	d := t.decider.Load().d
	sem := make(chan struct{}, t.opts.Concurrency)
	var wg sync.WaitGroup
	for g, ids := range groups {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			t.decideGroup(ctx, d, g, ids, recheck)
		}()
	}
	wg.Wait()
	t.observe()
}

func (t *Tracker) decideGroup(ctx context.Context, d Decider, g group, ids []string, recheck bool) {
	refs, err := t.images.ByImageID(ctx, g.imageID)
	if err != nil {
		t.log.Warn("running containers not re-decided: containerd's image records could not be read", "image_id", g.imageID, "error", err)
		return
	}
	img := enforce.NodeImage{ID: g.imageID, Refs: make([]enforce.NodeRef, len(refs))}
	for i, r := range refs {
		img.Refs[i] = enforce.NodeRef{Name: r.Name, Digest: r.Target}
	}
	dec := d.DecideNode(ctx, enforce.NodeRequest{Op: enforce.OpRunning, Namespace: g.ns, Image: img, Fresh: recheck, Quiet: true})
	now := t.opts.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		c, ok := t.ctrs[id]
		if !ok {
			continue
		}
		t.apply(c, dec, now)
	}
}

// apply records a decision on c and reports a change of verdict. A
// decision that could not be made (the registry unreachable, facts not
// established) changes nothing: an outage is no verdict.
func (t *Tracker) apply(c *Container, dec *enforce.Decision, now time.Time) {
	undecided := dec.FailedOpen || (dec.Denied() && (dec.Category == enforce.RegistryUnavailable || dec.NotVerified))
	if undecided {
		if c.Verdict == Pending {
			c.Reason = dec.Reason
		}
		return
	}
	verdict := Admitted
	if dec.Denied() || dec.Audited {
		verdict = Denied
	}
	changed := verdict != c.Verdict
	c.Image, c.Digest, c.Policy, c.Rule, c.Category, c.Audited = dec.Image, dec.Digest, dec.Policy, dec.Rule, string(dec.Category), dec.Audited
	c.Reason = dec.Reason
	c.Action = string(dec.Running)
	if c.Action == "" {
		c.Action = string(policy.RunningReport)
	}
	if changed {
		was := c.Verdict
		c.Verdict, c.Since = verdict, now
		t.report(c, was)
	}
	c.EvictAt, c.NoEviction = nil, ""
	if c.Verdict != Denied || c.Action != string(policy.RunningEvict) {
		return
	}
	switch {
	case c.Audited:
		c.NoEviction = "the policy is in audit mode: reported only"
	case slices.Contains(t.opts.Protected, c.Pod.Namespace):
		c.NoEviction = "namespace " + c.Pod.Namespace + " is protected: its pods are never evicted"
	case c.Pod.Static:
		c.NoEviction = "a static pod cannot be evicted through the API: reported only"
	default:
		at := c.Since.Add(dec.EvictAfter)
		c.EvictAt = &at
	}
}

// report writes the one audit line of a verdict change.
func (t *Tracker) report(c *Container, was string) {
	attrs := []any{"event", "running", "container", c.Name, "container_id", c.ID, "pod", c.Pod.Name, "namespace", c.Pod.Namespace,
		"image", c.Image, "image_id", c.ImageID, "digest", c.Digest, "policy", c.Policy, "rule", c.Rule, "verdict", c.Verdict,
		"previous", was, "action", c.Action, "reason", c.Reason}
	switch {
	case c.Verdict == Denied:
		t.log.Warn("running container no longer admitted", attrs...)
	case was == Denied:
		t.log.Info("running container admitted again", attrs...)
	default:
		t.log.Debug("running container admitted", attrs...)
	}
}

func (t *Tracker) observe() {
	if t.opts.Observe == nil {
		return
	}
	counts := map[[2]string]int{}
	t.mu.Lock()
	for _, c := range t.ctrs {
		counts[[2]string{c.Pod.Namespace, c.Verdict}]++
	}
	t.mu.Unlock()
	t.opts.Observe(counts)
}

// Status returns the running containers, sorted by namespace, pod and name.
func (t *Tracker) Status() Status {
	t.mu.Lock()
	st := Status{Time: t.opts.Now(), MaxEvictionsPerMinute: t.opts.MaxEvictionsPerMinute, Synchronized: t.synced}
	for _, c := range t.ctrs {
		cp := *c
		st.Containers = append(st.Containers, cp)
	}
	t.mu.Unlock()
	sort.Slice(st.Containers, func(i, j int) bool {
		a, b := st.Containers[i], st.Containers[j]
		if a.Pod.Namespace != b.Pod.Namespace {
			return a.Pod.Namespace < b.Pod.Namespace
		}
		if a.Pod.Name != b.Pod.Name {
			return a.Pod.Name < b.Pod.Name
		}
		return a.Name < b.Name
	})
	return st
}
