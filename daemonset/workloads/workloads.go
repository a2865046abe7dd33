// Package workloads is the DaemonSet agent's side of re-deciding running
// containers: the node daemon (which has no API access) says which running
// containers are no longer admitted and when their pods are due for
// eviction; this agent writes the Events and asks the Kubernetes Eviction
// API, which honours PodDisruptionBudgets. NRI's own eviction request is no
// use: containerd ignores it.
//
// Safety rails, on top of what the node daemon already decided (never in a
// protected namespace, never a static pod, never on a verdict from an
// unreachable registry, never in audit mode): at most N evictions a minute
// on the node, only pods bound to this node, and only the pod instance the
// daemon saw (UID precondition), so a replacement is never evicted for its
// predecessor.
package workloads

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/pullguard/pullguard/plugin/running"
)

// Event reasons on pods.
const (
	ReasonNotAdmitted     = "ImageNoLongerAdmitted"
	ReasonAdmittedAgain   = "ImageAdmittedAgain"
	ReasonEvicted         = "EvictedByPullguard"
	ReasonEvictionBlocked = "EvictionBlocked"
	// Component names the agent in Events.
	Component = "pullguard"
)

// maxMessage bounds an Event message.
const maxMessage = 1024

// apiTimeout bounds each call to the API server.
const apiTimeout = 10 * time.Second

// StatusSource reads the node daemon's view of its running containers.
type StatusSource func(ctx context.Context) (*running.Status, error)

// Options configure an Agent.
type Options struct {
	Client kubernetes.Interface
	// Node is this node's name: only pods bound to it are evicted.
	Node   string
	Status StatusSource
	// Interval is how often the daemon's status is read; default 10s.
	Interval time.Duration
	Logger   *slog.Logger
	Now      func() time.Time
}

// Agent writes Events and evictions for one node.
type Agent struct {
	opts Options
	log  *slog.Logger
	// reported remembers the verdict last reported per container, so each
	// change is one Event.
	reported map[string]string
	// evicted remembers pods whose eviction was accepted.
	evicted map[types.UID]bool
	// recent holds the times of this node's evictions in the last minute.
	recent []time.Time
}

// New returns an Agent.
func New(opts Options) *Agent {
	if opts.Interval <= 0 {
		opts.Interval = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Agent{opts: opts, log: opts.Logger, reported: map[string]string{}, evicted: map[types.UID]bool{}}
}

// Run reads the daemon's status every Interval and acts on it, until ctx
// ends. A daemon that cannot be read is retried; nothing is done meanwhile.
func (a *Agent) Run(ctx context.Context) error {
	t := time.NewTicker(a.opts.Interval)
	defer t.Stop()
	for {
		if err := a.Once(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("running workloads not acted on this round", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Once acts on the daemon's current status.
func (a *Agent) Once(ctx context.Context) error {
	st, err := a.opts.Status(ctx)
	if err != nil {
		return fmt.Errorf("read pullguard's status: %w", err)
	}
	now := a.opts.Now()
	seen := map[string]bool{}
	for _, c := range st.Containers {
		key := string(c.Pod.UID) + "/" + c.Name
		seen[key] = true
		a.report(ctx, key, c)
		if c.Verdict == running.Denied && c.EvictAt != nil && !now.Before(*c.EvictAt) {
			a.evict(ctx, c, st.MaxEvictionsPerMinute, now)
		}
	}
	for k := range a.reported {
		if !seen[k] {
			delete(a.reported, k)
		}
	}
	return nil
}

// report writes an Event when a container's verdict changed since the last
// report (a container first seen admitted is no news).
func (a *Agent) report(ctx context.Context, key string, c running.Container) {
	prev, known := a.reported[key]
	if c.Verdict == running.Pending || prev == c.Verdict {
		return
	}
	a.reported[key] = c.Verdict
	switch {
	case c.Verdict == running.Denied:
		msg := fmt.Sprintf("container %s: image %s (%s) is no longer admitted for namespace %q: %s", c.Name, c.Image, c.Digest, c.Pod.Namespace, c.Reason)
		switch {
		case c.EvictAt != nil:
			msg += fmt.Sprintf("; the pod will be evicted at %s", c.EvictAt.UTC().Format(time.RFC3339))
		case c.NoEviction != "":
			msg += "; " + c.NoEviction
		}
		a.event(ctx, c.Pod, corev1.EventTypeWarning, ReasonNotAdmitted, msg)
	case known && prev == running.Denied:
		a.event(ctx, c.Pod, corev1.EventTypeNormal, ReasonAdmittedAgain, fmt.Sprintf("container %s: image %s is admitted again", c.Name, c.Image))
	}
}

// evict asks the Eviction API to evict c's pod, within the rate limit.
func (a *Agent) evict(ctx context.Context, c running.Container, perMinute int, now time.Time) {
	uid := types.UID(c.Pod.UID)
	if a.evicted[uid] || c.Pod.Static {
		return
	}
	cut := 0
	for cut < len(a.recent) && now.Sub(a.recent[cut]) >= time.Minute {
		cut++
	}
	a.recent = a.recent[cut:]
	if len(a.recent) >= perMinute {
		a.log.Info("eviction postponed: this node's limit of evictions per minute is reached", "namespace", c.Pod.Namespace, "pod", c.Pod.Name, "limit", perMinute)
		return
	}
	gctx, cancel := context.WithTimeout(ctx, apiTimeout)
	pod, err := a.opts.Client.CoreV1().Pods(c.Pod.Namespace).Get(gctx, c.Pod.Name, metav1.GetOptions{})
	cancel()
	switch {
	case apierrors.IsNotFound(err):
		a.evicted[uid] = true // gone already
		return
	case err != nil:
		a.log.Warn("eviction postponed: the pod could not be read", "namespace", c.Pod.Namespace, "pod", c.Pod.Name, "error", err)
		return
	case pod.UID != uid:
		// Another pod of that name: the one pullguard saw is gone.
		a.evicted[uid] = true
		return
	case pod.Spec.NodeName != a.opts.Node:
		a.log.Warn("not evicting a pod bound to another node", "namespace", pod.Namespace, "pod", pod.Name, "pod_node", pod.Spec.NodeName, "node", a.opts.Node)
		return
	case isMirror(pod):
		return // a static pod's mirror: the API cannot evict it
	}
	ev := &policyv1.Eviction{
		ObjectMeta:    metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace},
		DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}},
	}
	// client-go retries a 429 after its Retry-After, ten times: a disruption
	// budget would hold the agent for minutes. One attempt; the next round
	// asks again.
	cctx, cancel := context.WithTimeout(ctx, apiTimeout)
	err = a.opts.Client.CoreV1().RESTClient().Post().Namespace(pod.Namespace).Resource("pods").Name(pod.Name).
		SubResource("eviction").MaxRetries(0).Body(ev).Do(cctx).Error()
	cancel()
	switch {
	case err == nil:
		a.evicted[uid] = true
		a.recent = append(a.recent, now)
		a.log.Warn("pod evicted: its image is no longer admitted", "event", "eviction", "namespace", pod.Namespace, "pod", pod.Name,
			"container", c.Name, "image", c.Image, "digest", c.Digest, "reason", c.Reason)
		a.event(ctx, c.Pod, corev1.EventTypeWarning, ReasonEvicted, fmt.Sprintf("evicted: container %s runs image %s, no longer admitted: %s", c.Name, c.Image, c.Reason))
	case apierrors.IsTooManyRequests(err):
		// A PodDisruptionBudget forbids it now; the next round asks again.
		a.log.Info("eviction refused by a disruption budget; will retry", "namespace", pod.Namespace, "pod", pod.Name, "error", err)
		a.event(ctx, c.Pod, corev1.EventTypeWarning, ReasonEvictionBlocked, "eviction refused for now: "+err.Error())
	case apierrors.IsNotFound(err), apierrors.IsConflict(err):
		a.evicted[uid] = true
	default:
		a.log.Warn("eviction failed; will retry", "namespace", pod.Namespace, "pod", pod.Name, "error", err)
	}
}

func isMirror(p *corev1.Pod) bool {
	_, ok := p.Annotations[corev1.MirrorPodAnnotationKey]
	return ok
}

func (a *Agent) event(ctx context.Context, pod running.Pod, typ, reason, msg string) {
	if len(msg) > maxMessage {
		msg = msg[:maxMessage-3] + "..."
	}
	now := metav1.NewTime(a.opts.Now())
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: strings.ToLower(pod.Name) + ".", Namespace: pod.Namespace},
		InvolvedObject: corev1.ObjectReference{
			Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name, UID: types.UID(pod.UID),
		},
		Reason: reason, Message: msg, Type: typ,
		Source:         corev1.EventSource{Component: Component, Host: a.opts.Node},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
	}
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	if _, err := a.opts.Client.CoreV1().Events(pod.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		a.log.Warn("creating an Event failed", "namespace", pod.Namespace, "pod", pod.Name, "reason", reason, "error", err)
	}
}
