package policysync

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	apiv1beta1 "github.com/pullguard/pullguard/daemonset/api/v1beta1"
	"github.com/pullguard/pullguard/plugin/policy"
)

// Condition and Event vocabulary.
const (
	ConditionAccepted = apiv1beta1.ConditionAccepted // the CRDs' Accepted column reads it
	ReasonValid       = "Valid"
	ReasonInvalid     = "Invalid"
	EventRejected     = "PolicyRejected"
	// Component names the agent in Events.
	Component = "pullguard-policy-sync"
)

// maxMessage bounds a condition or Event message (the CRD allows 32 KiB; Events 1 KiB is kind).
const maxMessage = 1024

// elect campaigns for the status-writer Lease until ctx ends. Only the leader writes status and
// Events: with one agent per node, every node writing the same condition would be a storm.
func (a *Agent) elect(ctx context.Context) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: a.opts.LeaseName, Namespace: a.opts.Namespace},
		Client:     a.opts.Leases,
		LockConfig: resourcelock.ResourceLockConfig{Identity: a.opts.Identity},
	}
	d := a.opts.LeaseDuration
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   d,
			RenewDeadline:   d * 2 / 3,
			RetryPeriod:     d / 7,
			ReleaseOnCancel: true,
			Name:            a.opts.LeaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					a.leading.Store(true)
					a.log.InfoContext(ctx, "this agent now writes policy status", "lease", a.opts.Namespace+"/"+a.opts.LeaseName)
					a.changed()
				},
				OnStoppedLeading: func() {
					a.leading.Store(false)
					a.mu.Lock()
					a.reported = map[string]string{} // a later term re-checks everything
					a.mu.Unlock()
				},
			},
		})
		if err != nil {
			a.log.ErrorContext(ctx, "leader election misconfigured; status is not written", "error", err.Error())
			return
		}
		le.Run(ctx)
	}
}

// report brings each object's Accepted condition in line with its verdict, and emits an Event
// when an object is newly rejected (or rejected for a new reason).
func (a *Agent) report(ctx context.Context, objs []observed) {
	retry := false
	for _, o := range objs {
		if ctx.Err() != nil || !a.leading.Load() {
			return
		}
		key, u := o.key, o.u
		a.mu.Lock()
		v := a.verdicts[key]
		a.mu.Unlock()
		if v == nil || v.rv != u.GetResourceVersion() {
			continue // a newer version is on its way
		}
		status, reason, msg := metav1.ConditionTrue, ReasonValid, "valid; rendered into each node's synced policy directory"
		if v.notes != "" {
			// Fields accepted but not acted on (Portieris' mutateImage, ...): the author reads
			// them here rather than in a node's log.
			msg = truncate(msg+"; note: "+v.notes, maxMessage)
		}
		if v.err != nil {
			status, reason = metav1.ConditionFalse, ReasonInvalid
			msg = truncate(v.err.Error()+" -- not applied: nodes keep the last accepted version of this object, if any", maxMessage)
		}
		want := fmt.Sprintf("%s|%s|%s|%d", status, reason, msg, v.generation)
		a.mu.Lock()
		done := a.reported[v.uid] == want
		a.mu.Unlock()
		if done {
			continue
		}
		if !conditionIs(u, status, reason, msg, v.generation) {
			if err := a.writeCondition(ctx, key, u, status, reason, msg, v.generation); err != nil {
				if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
					a.log.WarnContext(ctx, "writing policy status failed; will retry", "object", key.String(), "error", err.Error())
				}
				retry = true
				continue
			}
			if v.err != nil {
				a.event(ctx, key, u, msg)
			}
		}
		a.mu.Lock()
		a.reported[v.uid] = want
		a.mu.Unlock()
	}
	if retry {
		// The object changed under us or the API server hiccupped; try again shortly.
		time.AfterFunc(time.Second, a.changed)
	}
}

func conditionIs(u *unstructured.Unstructured, status metav1.ConditionStatus, reason, msg string, gen int64) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok || m["type"] != ConditionAccepted {
			continue
		}
		og, _ := m["observedGeneration"].(int64)
		return m["status"] == string(status) && m["reason"] == reason && m["message"] == msg && og == gen
	}
	return false
}

func (a *Agent) writeCondition(ctx context.Context, key Key, u *unstructured.Unstructured, status metav1.ConditionStatus, reason, msg string, gen int64) error {
	obj := u.DeepCopy()
	now := metav1.Now().UTC().Format(time.RFC3339)
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	next := map[string]any{
		"type": ConditionAccepted, "status": string(status), "reason": reason, "message": msg,
		"observedGeneration": gen, "lastTransitionTime": now,
	}
	replaced := false
	for i, c := range conds {
		m, ok := c.(map[string]any)
		if !ok || m["type"] != ConditionAccepted {
			continue
		}
		if m["status"] == string(status) {
			if t, ok := m["lastTransitionTime"].(string); ok {
				next["lastTransitionTime"] = t
			}
		}
		conds[i], replaced = next, true
	}
	if !replaced {
		conds = append(conds, next)
	}
	if err := unstructured.SetNestedSlice(obj.Object, conds, "status", "conditions"); err != nil {
		return err
	}
	if err := unstructured.SetNestedField(obj.Object, gen, "status", "observedGeneration"); err != nil {
		return err
	}
	gvr := ImagePoliciesResource
	if key.Kind == policy.KindCluster {
		gvr = ClusterImagePoliciesResource
	}
	_, err := a.opts.Client.Resource(gvr).Namespace(obj.GetNamespace()).UpdateStatus(ctx, obj, metav1.UpdateOptions{FieldManager: Component})
	return err
}

func (a *Agent) event(ctx context.Context, key Key, u *unstructured.Unstructured, msg string) {
	ns := u.GetNamespace()
	if ns == "" {
		ns = metav1.NamespaceDefault // where Events about cluster-scoped objects go
	}
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: u.GetName() + ".", Namespace: ns},
		InvolvedObject: corev1.ObjectReference{
			APIVersion: Group + "/" + Version, Kind: string(key.Kind), Namespace: u.GetNamespace(),
			Name: u.GetName(), UID: types.UID(u.GetUID()), ResourceVersion: u.GetResourceVersion(),
		},
		Reason: EventRejected, Message: msg, Type: corev1.EventTypeWarning,
		Source:         corev1.EventSource{Component: Component, Host: a.opts.Identity},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: "pullguard.dev/policy-sync", ReportingInstance: a.opts.Identity,
	}
	if _, err := a.opts.Events.Events(ns).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		a.log.WarnContext(ctx, "creating an Event failed", "object", key.String(), "error", err.Error())
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n-3], "") + "..."
}
