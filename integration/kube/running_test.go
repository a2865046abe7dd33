package kube

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/pullguard/pullguard/daemonset/hoststate"
	"github.com/pullguard/pullguard/daemonset/workloads"
	"github.com/pullguard/pullguard/integration/testbed"
	"github.com/pullguard/pullguard/plugin/running"
	"github.com/pullguard/pullguard/plugin/trust/trusttest"
)

// TestRunningWorkloadsEvicted: containers run in containerd with pullguard's NRI gate, their
// pods exist in a real API server; a policy change makes their image no longer admitted. The
// agent (as the DaemonSet runs it, with the agent's RBAC) reports each with an Event and evicts
// the pods whose policy asks for it after evictAfter, through the Eviction API: a
// PodDisruptionBudget is honoured, kube-system is never evicted, the per-node rate limit holds,
// and a re-create on the node is refused.
func TestRunningWorkloadsEvicted(t *testing.T) {
	srv := server(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs containerd")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bed, err := testbed.Start(ctx, testbed.Options{NRI: true, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := bed.Close(context.Background()); err != nil {
			t.Errorf("close bed: %v", err)
		}
	})
	admin := clientset(t, srv, AdminUser)
	const node = "node-running"
	ca := trusttest.NewCA(t, "release root")
	store := trusttest.WriteStore(t, ca)
	host := bed.Registry.Host
	policies := func(trust bool) string {
		checks := ""
		if trust {
			checks = "    [policies.repositories.policy.trust]\n    enabled = true\n"
		}
		var b strings.Builder
		for _, ns := range []string{"evict-a", "budget", "kube-system"} {
			fmt.Fprintf(&b, "[[policies]]\nkind = \"ImagePolicy\"\nname = \"p\"\nnamespace = %q\nrunning = \"evict\"\nevict_after = \"2s\"\n  [[policies.repositories]]\n  name = %q\n%s\n",
				ns, host+"/testbed/*", checks)
		}
		return b.String()
	}
	signers := fmt.Sprintf("[[signers]]\nname = \"release\"\ntrust_store = %q\nidentities = [\"*\"]\nrevocation = \"skip\"\n\n[running]\nmax_evictions_per_minute = 1\n\n", store)
	pg, err := bed.StartPullguard(ctx, testbed.PullguardOptions{Config: signers + policies(false)})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("pullguard log:\n%s", tail(pg.Logs(), 6000))
		}
	}()

	// Pods as the API server knows them, bound to this node, and their sandboxes in containerd.
	type podRef struct{ ns, name, uid, sandbox string }
	var pods []podRef
	for _, p := range []struct{ ns, name string }{{"evict-a", "one"}, {"evict-a", "two"}, {"budget", "guarded"}, {"kube-system", "system"}} {
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: p.ns}}, metav1.CreateOptions{}); err != nil && !strings.Contains(err.Error(), "already exists") {
			t.Fatal(err)
		}
		obj, err := admin.CoreV1().Pods(p.ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p.name, Labels: map[string]string{"app": p.name}},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: bed.Busybox.Ref}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// No kubelet reports on these pods: say they run and are ready, as kubelet would, so the
		// Eviction API weighs them against their disruption budgets (a pending pod is deleted
		// whatever its budget says).
		obj.Status = corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
		if _, err := admin.CoreV1().Pods(p.ns).UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		cfg, err := bed.WritePodConfig(testbed.PodConfig{Name: p.name, Namespace: p.ns, UID: string(obj.UID)})
		if err != nil {
			t.Fatal(err)
		}
		r := pg.Crictl.Run(ctx, "runp", cfg)
		if r.Err != nil {
			t.Fatal(r)
		}
		sandbox := strings.TrimSpace(r.Stdout)
		if r := pg.Crictl.Run(ctx, "pull", "--pod-config", cfg, bed.Busybox.Ref); r.Err != nil {
			t.Fatal(r)
		}
		ctrCfg, err := bed.WriteContainerConfig(testbed.ContainerConfig{Name: "app", Image: bed.Busybox.Ref, Command: []string{"sleep", "3600"}})
		if err != nil {
			t.Fatal(err)
		}
		r = bed.Crictl.Run(ctx, "create", sandbox, ctrCfg, cfg)
		if r.Err != nil {
			t.Fatal(r)
		}
		if r := bed.Crictl.Run(ctx, "start", strings.TrimSpace(r.Stdout)); r.Err != nil {
			t.Fatal(r)
		}
		pods = append(pods, podRef{p.ns, p.name, string(obj.UID), sandbox})
	}
	if _, err := admin.PolicyV1().PodDisruptionBudgets("budget").Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "guarded"},
		Spec: policyv1.PodDisruptionBudgetSpec{MinAvailable: &intstr.IntOrString{IntVal: 1},
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "guarded"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The agent, with the DaemonSet's identity and RBAC, reading pullguard's admin socket.
	agentClient, err := kubernetes.NewForConfig(config(t, srv, AgentUser))
	if err != nil {
		t.Fatal(err)
	}
	agentLog := &testbed.SafeBuffer{}
	agent := workloads.New(workloads.Options{Client: agentClient, Node: node, Interval: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(agentLog, nil)),
		Status: func(ctx context.Context) (*running.Status, error) {
			st, _, err := running.FetchStatus(ctx, pg.AdminSocket)
			return st, err
		}})
	defer func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", agentLog.String()[:min(len(agentLog.String()), 3000)])
		}
	}()
	actx, stopAgent := context.WithCancel(ctx)
	agentDone := make(chan struct{})
	go func() { defer close(agentDone); _ = agent.Run(actx) }()
	defer func() { stopAgent(); <-agentDone }()

	// Every container is admitted and nothing happens.
	eventually(t, ctx, "all four admitted", func() bool { return countVerdict(t, ctx, pg, running.Admitted) == 4 })

	// The policies now require a signature the image does not have.
	changed := time.Now()
	setConfig(t, pg, signers+policies(true))
	eventually(t, ctx, "all four denied", func() bool { return countVerdict(t, ctx, pg, running.Denied) == 4 })
	for _, p := range pods {
		eventually(t, ctx, "an Event on "+p.ns+"/"+p.name, func() bool { return hasEvent(t, ctx, admin, p.ns, p.name, workloads.ReasonNotAdmitted) })
	}

	// evict-a: one of the two pods is evicted after evictAfter, the other waits for the
	// per-node limit (1 a minute).
	eventually(t, ctx, "an eviction in evict-a", func() bool { return terminating(t, ctx, admin, "evict-a") == 1 })
	if took := time.Since(changed); took < 2*time.Second {
		t.Errorf("evicted %s after the change, before evictAfter (2s)", took)
	}
	// The guarded pod's eviction is refused by its budget, and reported (a refused eviction does
	// not count against the node's limit; "budget" sorts first, so it is asked first).
	eventually(t, ctx, "the budget to refuse", func() bool { return hasEvent(t, ctx, admin, "budget", "guarded", workloads.ReasonEvictionBlocked) })
	if n := terminating(t, ctx, admin, "budget"); n != 0 {
		t.Errorf("the pod protected by a disruption budget was evicted")
	}
	// kube-system is protected, whatever its policy says.
	if n := terminating(t, ctx, admin, "kube-system"); n != 0 {
		t.Errorf("a kube-system pod was evicted")
	}
	st := runningStatus(t, ctx, pg)
	for _, c := range st.Containers {
		if c.Pod.Namespace == "kube-system" && (c.EvictAt != nil || !strings.Contains(c.NoEviction, "protected")) {
			t.Errorf("kube-system container: %+v", c)
		}
	}
	// The second pod of evict-a is due too, and held back by the limit.
	eventually(t, ctx, "the limit to hold an eviction back", func() bool {
		return strings.Contains(agentLog.String(), "limit of evictions per minute is reached")
	})
	if n := terminating(t, ctx, admin, "evict-a"); n != 1 {
		t.Errorf("%d evictions in evict-a within the minute, want 1 (max_evictions_per_minute = 1)", n)
	}

	// The evicted pod's replacement would be refused on this node.
	cfg, err := bed.WritePodConfig(testbed.PodConfig{Name: "replacement", Namespace: "evict-a"})
	if err != nil {
		t.Fatal(err)
	}
	r := pg.Crictl.Run(ctx, "runp", cfg)
	if r.Err != nil {
		t.Fatal(r)
	}
	ctrCfg, err := bed.WriteContainerConfig(testbed.ContainerConfig{Name: "app", Image: bed.Busybox.Ref, Command: []string{"sleep", "3600"}})
	if err != nil {
		t.Fatal(err)
	}
	var create testbed.Result
	eventually(t, ctx, "the re-create to be decided", func() bool {
		create = bed.Crictl.Run(ctx, "create", strings.TrimSpace(r.Stdout), ctrCfg, cfg)
		return !strings.Contains(create.Output(), "has not verified")
	})
	if create.Err == nil || !strings.Contains(create.Output(), "SignatureValidationFailed") {
		t.Errorf("re-create in evict-a: want pullguard's refusal: %v", create)
	}

	// The policies admit the image again: the denials clear, with an Event each.
	setConfig(t, pg, signers+policies(false))
	eventually(t, ctx, "the verdicts to clear", func() bool { return countVerdict(t, ctx, pg, running.Denied) == 0 })
	eventually(t, ctx, "an admitted-again Event", func() bool {
		return hasEvent(t, ctx, admin, "budget", "guarded", workloads.ReasonAdmittedAgain)
	})
}

func runningStatus(t *testing.T, ctx context.Context, pg *testbed.Pullguard) running.Status {
	t.Helper()
	st, _, err := running.FetchStatus(ctx, pg.AdminSocket)
	if err != nil {
		t.Fatal(err)
	}
	return *st
}

func countVerdict(t *testing.T, ctx context.Context, pg *testbed.Pullguard, verdict string) int {
	n := 0
	for _, c := range runningStatus(t, ctx, pg).Containers {
		if c.Verdict == verdict {
			n++
		}
	}
	return n
}

// setConfig rewrites pullguard's config and tells it to reload.
func setConfig(t *testing.T, pg *testbed.Pullguard, extra string) {
	t.Helper()
	cfg, err := os.ReadFile(pg.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	// The bed's own part comes first; the test's part starts at its first [[signers]].
	base := string(cfg)[:strings.Index(string(cfg), "[[signers]]")]
	if err := hoststate.WriteFileAtomic(pg.ConfigPath, []byte(base+extra), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := pg.Process().Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

func hasEvent(t *testing.T, ctx context.Context, cs kubernetes.Interface, ns, pod, reason string) bool {
	t.Helper()
	evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		if e.InvolvedObject.Name == pod && e.Reason == reason {
			return true
		}
	}
	return false
}

// terminating counts the pods of ns an eviction has marked for deletion (no kubelet runs here
// to finish it).
func terminating(t *testing.T, ctx context.Context, cs kubernetes.Interface, ns string) int {
	t.Helper()
	list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range list.Items {
		if p.DeletionTimestamp != nil {
			n++
		}
	}
	return n
}

func eventually(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-wctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
