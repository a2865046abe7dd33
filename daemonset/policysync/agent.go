package policysync

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"

	apiv1beta1 "github.com/pullguard/pullguard/daemonset/api/v1beta1"
	"github.com/pullguard/pullguard/plugin/policy"
)

// Resources of the two kinds.
var (
	ImagePoliciesResource        = apiv1beta1.GroupVersion.WithResource(apiv1beta1.ResourceImagePolicies)
	ClusterImagePoliciesResource = apiv1beta1.GroupVersion.WithResource(apiv1beta1.ResourceClusterImagePolicies)
)

var kinds = []struct {
	kind policy.Kind
	gvr  schema.GroupVersionResource
}{
	{policy.KindCluster, ClusterImagePoliciesResource},
	{policy.KindNamespace, ImagePoliciesResource},
}

// Options configures an Agent. Client, Dir, Namespace and Identity are required; Events and
// Leases too unless DisableStatus is set.
type Options struct {
	Client dynamic.Interface
	// Events and Leases are narrow typed clients: Events to report rejected objects, Leases for
	// the election of the one agent that writes status.
	Events corev1client.EventsGetter
	Leases coordinationv1client.LeasesGetter
	// Dir is the synced policy directory the host daemon reads ([policy] synced_dir).
	Dir string
	// Namespace is pullguard's own namespace (the Lease lives there); Identity names this agent
	// (the node name), in the Lease and in Events.
	Namespace string
	Identity  string
	// Signers returns the signer names defined in the node config; nil skips the check. An
	// error (node config unreadable) skips it too, loudly: the daemon judges the set anyway.
	Signers func() ([]string, error)
	// NodePolicies returns the policies of the node's other sources (config.toml inline, the
	// policy directory). An object with the same kind, namespace and name as one of them is
	// rejected: the daemon refuses a set with duplicates, so one such object would freeze every
	// later policy change on the node. nil skips the check; an error skips it too, loudly.
	NodePolicies func() ([]policy.Policy, error)
	// Probe checks that the API server answers (e.g. GET /readyz); nil leaves connectivity to
	// the watches' errors.
	Probe func(ctx context.Context) error
	// SignerSecrets, when set, writes the trust stores of signers named in policies from
	// Secrets in pullguard's namespace (see SignerSecrets).
	SignerSecrets *SignerSecrets
	// DisableStatus turns off leader election, status and Events (a read-only agent).
	DisableStatus bool
	LeaseName     string        // default "pullguard-policy-status"
	LeaseDuration time.Duration // default 15s; RenewDeadline 2/3 of it, RetryPeriod 1/7
	// Debounce gathers a burst of changes into one snapshot; default 50ms.
	Debounce time.Duration
	// Recheck re-evaluates every object this often (node config signers may have changed);
	// default 30s. ProbeInterval defaults to 10s; Resync (informer) to 10m.
	Recheck       time.Duration
	ProbeInterval time.Duration
	Resync        time.Duration
	Logger        *slog.Logger
}

// Agent syncs the custom resources to the node.
type Agent struct {
	opts  Options
	snaps Store
	log   *slog.Logger
	kick  chan struct{}

	informers map[policy.Kind]cache.SharedIndexInformer
	leading   atomic.Bool

	mu       sync.Mutex
	lastGood map[Key][]byte    // what is on disk for each object
	verdicts map[Key]*verdict  // the last evaluation of each object's current version
	reported map[string]string // uid -> condition last written (leader only)
	health   Health

	signerFetched map[string]signerFetch // sync loop only
}

type verdict struct {
	uid, rv    string
	generation int64
	signers    string // hash of the signer names it was checked against
	data       []byte
	notes      string // the rendered policy's warnings, joined
	err        error
}

// Health is the agent's state as /readyz reports it.
type Health struct {
	Synced     bool      // both kinds listed at least once since start
	Connected  bool      // the API server answered recently
	Leader     bool      // this agent writes status
	LastWrite  time.Time // last snapshot swap
	OnDisk     int       // policies in the synced directory
	Rejected   int       // objects whose current version is not applied
	LastError  string    // why the API server is unreachable, or the last write failed
	Disconnect time.Time // since when the API server is unreachable
}

// Ready reports whether the node's synced policies follow the cluster.
func (h Health) Ready() bool { return h.Synced && h.Connected }

// New checks opts and prepares an Agent; Run starts it.
func New(opts Options) (*Agent, error) {
	if opts.Client == nil || opts.Dir == "" || opts.Namespace == "" || opts.Identity == "" {
		return nil, errors.New("policysync: client, dir, namespace and identity are required")
	}
	if !opts.DisableStatus && (opts.Events == nil || opts.Leases == nil) {
		return nil, errors.New("policysync: events and leases clients are required unless status is disabled")
	}
	if ss := opts.SignerSecrets; ss != nil && (ss.Client == nil || ss.Namespace == "" || ss.Dir == "") {
		return nil, errors.New("policysync: signer secrets need a client, pullguard's namespace and a directory")
	}
	if opts.LeaseName == "" {
		opts.LeaseName = "pullguard-policy-status"
	}
	if opts.LeaseDuration <= 0 {
		opts.LeaseDuration = 15 * time.Second
	}
	if opts.Debounce <= 0 {
		opts.Debounce = 50 * time.Millisecond
	}
	if opts.Recheck <= 0 {
		opts.Recheck = 30 * time.Second
	}
	if opts.ProbeInterval <= 0 {
		opts.ProbeInterval = 10 * time.Second
	}
	if opts.Resync <= 0 {
		opts.Resync = 10 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Agent{
		opts:     opts,
		snaps:    Store{Dir: opts.Dir},
		log:      opts.Logger,
		kick:     make(chan struct{}, 1),
		lastGood: map[Key][]byte{},
		verdicts: map[Key]*verdict{},
		reported: map[string]string{},
		health:   Health{Connected: true},

		signerFetched: map[string]signerFetch{},
	}, nil
}

// Health returns a copy of the agent's state.
func (a *Agent) Health() Health {
	a.mu.Lock()
	defer a.mu.Unlock()
	h := a.health
	h.Leader = a.leading.Load()
	return h
}

// Run syncs until ctx ends. It starts from what is on disk: until both kinds have been listed,
// nothing is written, so an API server that is down at start leaves the node's last synced
// policies in force.
func (a *Agent) Run(ctx context.Context) error {
	onDisk, skipped, err := a.snaps.Load()
	if err != nil {
		return err
	}
	for _, s := range skipped {
		a.log.WarnContext(ctx, "ignoring an unreadable synced policy file; the next sync replaces it", "error", s)
	}
	a.mu.Lock()
	a.lastGood = onDisk
	a.health.OnDisk = len(onDisk)
	a.mu.Unlock()
	a.log.InfoContext(ctx, "policy sync starting", "dir", a.opts.Dir, "policies_on_disk", len(onDisk), "identity", a.opts.Identity)

	factory := dynamicinformer.NewDynamicSharedInformerFactory(a.opts.Client, a.opts.Resync)
	a.informers = map[policy.Kind]cache.SharedIndexInformer{}
	for _, k := range kinds {
		inf := factory.ForResource(k.gvr).Informer()
		kind := k.kind
		if err := inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) { a.disconnected(ctx, kind, err) }); err != nil {
			return fmt.Errorf("policysync: watch error handler: %w", err)
		}
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { a.changed() },
			UpdateFunc: func(any, any) { a.changed() },
			DeleteFunc: func(any) { a.changed() },
		}); err != nil {
			return fmt.Errorf("policysync: event handler: %w", err)
		}
		a.informers[kind] = inf
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if a.opts.Probe != nil {
		wg.Go(func() { a.probeLoop(ctx) })
	}
	if !a.opts.DisableStatus {
		wg.Go(func() { a.elect(ctx) })
	}
	wg.Go(func() {
		synced := []cache.InformerSynced{}
		for _, inf := range a.informers {
			synced = append(synced, inf.HasSynced)
		}
		if cache.WaitForCacheSync(ctx.Done(), synced...) {
			a.log.InfoContext(ctx, "policy objects listed from the API server")
			a.changed()
		}
	})
	recheck := time.NewTicker(a.opts.Recheck)
	defer recheck.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.kick:
		case <-recheck.C:
		}
		// Gather a burst (an apply of many objects, the initial list) into one snapshot.
		timer := time.NewTimer(a.opts.Debounce)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
		a.sync(ctx)
	}
}

// changed asks the loop for a sync; it never blocks an informer.
func (a *Agent) changed() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func (a *Agent) synced() bool {
	for _, inf := range a.informers {
		if !inf.HasSynced() {
			return false
		}
	}
	return len(a.informers) > 0
}

// sync renders the informers' view into a snapshot and, on the leader, reports verdicts.
func (a *Agent) sync(ctx context.Context) {
	if !a.synced() {
		return
	}
	known, sigHash := a.signers(ctx)
	others, othersHash := a.nodePolicies(ctx)
	sigHash += "|" + othersHash
	var objs []observed
	a.mu.Lock()
	seen := map[Key]bool{}
	signerNames := map[string]bool{}
	desired := map[Key][]byte{}
	rejected := 0
	for _, k := range kinds {
		for _, item := range a.informers[k.kind].GetStore().List() {
			u, ok := item.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			obj := objectOf(k.kind, u)
			seen[obj.Key] = true
			signerNamesOf(obj.Spec, signerNames)
			v := a.verdicts[obj.Key]
			if v == nil || v.uid != obj.UID || v.rv != obj.ResourceVersion || v.signers != sigHash {
				v = &verdict{uid: obj.UID, rv: obj.ResourceVersion, generation: obj.Generation, signers: sigHash}
				r, err := Render(obj, a.opts.Dir, known)
				switch {
				case err != nil:
					v.err = err
				case others[obj.Key] != "":
					v.err = fmt.Errorf("%s is also defined in %s on this node; the daemon refuses duplicate policies: rename the object", obj.Key, others[obj.Key])
				default:
					v.data = r.Data
					v.notes = strings.Join(r.Policy.Warnings, "; ")
				}
				if v.err != nil && (a.verdicts[obj.Key] == nil || a.verdicts[obj.Key].err == nil || a.verdicts[obj.Key].err.Error() != v.err.Error()) {
					a.log.WarnContext(ctx, "policy object REJECTED; the node keeps its last good version of it, if any",
						"object", obj.Key.String(), "generation", obj.Generation, "error", v.err.Error())
				}
				a.verdicts[obj.Key] = v
			}
			switch {
			case v.err == nil:
				a.lastGood[obj.Key] = v.data
				desired[obj.Key] = v.data
			default:
				rejected++
				if good, ok := a.lastGood[obj.Key]; ok {
					desired[obj.Key] = good
				}
			}
			objs = append(objs, observed{key: obj.Key, u: u})
		}
	}
	// Objects gone from a successful list are deleted in the cluster: drop them.
	for k := range a.lastGood {
		if !seen[k] {
			delete(a.lastGood, k)
		}
	}
	for k := range a.verdicts {
		if !seen[k] {
			delete(a.verdicts, k)
		}
	}
	a.health.Synced = true
	a.health.Rejected = rejected
	a.mu.Unlock()

	a.syncSigners(ctx, signerNames)
	changed, err := a.snaps.Write(desired)
	a.mu.Lock()
	if err != nil {
		a.health.LastError = err.Error()
	} else {
		a.health.OnDisk = len(desired)
		if changed {
			a.health.LastWrite = time.Now()
		}
	}
	a.mu.Unlock()
	if err != nil {
		a.log.ErrorContext(ctx, "writing synced policies failed; the previous ones stay in force", "dir", a.opts.Dir, "error", err.Error())
	} else if changed {
		a.log.InfoContext(ctx, "synced policies written", "dir", a.opts.Dir, "policies", len(desired), "rejected", rejected)
	}
	if a.leading.Load() {
		a.report(ctx, objs)
	}
}

// signers returns the node's signer check and a hash identifying it (so that a node config
// change re-evaluates objects).
func (a *Agent) signers(ctx context.Context) (SignerCheck, string) {
	if a.opts.Signers == nil {
		return nil, "unchecked"
	}
	names, err := a.opts.Signers()
	if err != nil {
		a.log.WarnContext(ctx, "node config unreadable; signer names in policies are not checked here (the daemon still checks them)", "error", err.Error())
		return nil, "unchecked"
	}
	names = slices.Clone(names)
	slices.Sort(names)
	h := sha256.New()
	for _, n := range names {
		fmt.Fprintf(h, "%q\n", n)
	}
	return func(s string) bool { return slices.Contains(names, s) }, hex.EncodeToString(h.Sum(nil))
}

// observed is an object as the informer holds it, with the kind it was listed as.
type observed struct {
	key Key
	u   *unstructured.Unstructured
}

// nodePolicies maps the keys of the node's other policies to their sources, with a hash of the
// map so that a change there re-evaluates objects.
func (a *Agent) nodePolicies(ctx context.Context) (map[Key]string, string) {
	if a.opts.NodePolicies == nil {
		return nil, "unchecked"
	}
	ps, err := a.opts.NodePolicies()
	if err != nil {
		a.log.WarnContext(ctx, "node policies unreadable; objects are not checked against them here (the daemon still is)", "error", err.Error())
		return nil, "unchecked"
	}
	out := make(map[Key]string, len(ps))
	h := sha256.New()
	for _, p := range ps {
		k := Key{Kind: p.Kind, Namespace: p.Namespace, Name: p.Name}
		out[k] = p.Source
		fmt.Fprintf(h, "%s\x00%s\n", k, p.Source)
	}
	return out, hex.EncodeToString(h.Sum(nil))
}

func objectOf(kind policy.Kind, u *unstructured.Unstructured) Object {
	spec, _ := u.Object["spec"].(map[string]any)
	return Object{
		Key:             Key{Kind: kind, Namespace: u.GetNamespace(), Name: u.GetName()},
		UID:             string(u.GetUID()),
		ResourceVersion: u.GetResourceVersion(),
		Generation:      u.GetGeneration(),
		Spec:            spec,
	}
}

// disconnected records a watch failure: the stores keep the last listed objects and the disk
// keeps the last snapshot.
func (a *Agent) disconnected(ctx context.Context, kind policy.Kind, err error) {
	a.mu.Lock()
	was := a.health.Connected
	a.health.Connected = false
	a.health.LastError = fmt.Sprintf("watch %s: %v", kind, err)
	if was {
		a.health.Disconnect = time.Now()
	}
	onDisk := a.health.OnDisk
	a.mu.Unlock()
	if was {
		a.log.WarnContext(ctx, "API server unreachable; the node keeps enforcing its last synced policies",
			"kind", string(kind), "policies_on_disk", onDisk, "error", err.Error())
	}
}

func (a *Agent) probeLoop(ctx context.Context) {
	t := time.NewTicker(a.opts.ProbeInterval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, a.opts.ProbeInterval)
		err := a.opts.Probe(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			a.disconnected(ctx, "API server probe", err)
		} else {
			a.mu.Lock()
			was := a.health.Connected
			a.health.Connected = true
			if !was {
				a.health.LastError = ""
			}
			a.mu.Unlock()
			if !was {
				a.log.InfoContext(ctx, "API server reachable again")
				a.changed()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
