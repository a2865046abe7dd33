package e2e

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pullguard/pullguard/integration/testbed"
)

// lifecyclePolicy admits the bed's runnable images in namespace ns.
func lifecyclePolicy(b *testbed.Bed, ns string) testbed.PullguardOptions {
	return testbed.PullguardOptions{Config: inlineTOML(ns, ns, rule{name: b.Registry.Host + "/testbed/*"})}
}

// TestPodLifecycle runs a pod as kubelet does with pullguard installed: image calls through
// pullguard, runtime calls straight to containerd, every create decided inside containerd.
func TestPodLifecycle(t *testing.T) {
	t.Parallel()
	b := ownBed(t)
	ctx := testCtx(t)
	pg := startPullguard(t, b, lifecyclePolicy(b, "life"))
	c := pg.Crictl
	pod := podConfig(t, b, "lc", "life")
	ctr, err := b.WriteContainerConfig(testbed.ContainerConfig{Name: "main", Image: b.Busybox.Ref,
		Command: []string{"sh", "-c", "echo started-with-pullguard; exec sleep 3600"}})
	if err != nil {
		t.Fatal(err)
	}
	must := func(args ...string) string {
		t.Helper()
		r := c.Run(ctx, args...)
		t.Logf("crictl %s: %s", args[0], r.Took.Round(time.Millisecond))
		if r.Err != nil {
			t.Fatalf("%v", r)
		}
		return strings.TrimSpace(r.Stdout)
	}
	must("pull", "--pod-config", pod, b.Busybox.Ref)
	podID := must("runp", pod)
	ctrID := must("create", podID, ctr, pod)
	must("start", ctrID)
	if out := must("exec", ctrID, "cat", "/etc/marker"); out != "busybox" {
		t.Errorf("exec: got %q, want %q", out, "busybox")
	}
	if !waitUntil(ctx, func() bool { return strings.Contains(c.Run(ctx, "logs", ctrID).Output(), "started-with-pullguard") }) {
		t.Errorf("logs never showed the greeting: %v", c.Run(ctx, "logs", ctrID))
	}
	if lines := pg.LogLines(`"op":"create"`, `"verdict":"admit"`, `"namespace":"life"`); len(lines) == 0 {
		t.Errorf("no create-time admission in pullguard's audit log")
	}
	if st := must("inspect", "-o", "go-template", "--template", "{{.status.state}}", ctrID); st != "CONTAINER_RUNNING" {
		t.Errorf("container state %q, want CONTAINER_RUNNING", st)
	}
	must("stop", "--timeout", "2", ctrID)
	must("rm", ctrID)
	if ids := must("ps", "-a", "-q", "--pod", podID); ids != "" {
		t.Errorf("containers left in pod after rm: %q", ids)
	}
	must("stopp", podID)
	must("rmp", podID)
	if ids := must("pods", "-q", "--namespace", "life"); ids != "" {
		t.Errorf("pods left after rmp: %q", ids)
	}
}

// TestEventsStream: kubelet's event stream (a runtime call) reaches it with pullguard
// installed; creates decided inside containerd show up in it.
func TestEventsStream(t *testing.T) {
	t.Parallel()
	b := ownBed(t)
	ctx := testCtx(t)
	pg := startPullguard(t, b, lifecyclePolicy(b, "events"))
	c := pg.Crictl
	pod := podConfig(t, b, "ev", "events")
	if r := c.Run(ctx, "pull", "--pod-config", pod, b.Busybox.Ref); r.Err != nil {
		t.Fatal(r)
	}

	cmd, out, err := c.Start("events")
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}
	}
	t.Cleanup(stop)
	// The stream is up once crictl is subscribed; an event we cause afterwards must arrive.
	// Events are not replayed, so keep creating containers until one shows: the first may
	// race the subscription.
	podID := strings.TrimSpace(c.Run(ctx, "runp", pod).Stdout)
	if podID == "" {
		t.Fatal("runp returned no pod id")
	}
	var seen string
	deadline, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for i := 0; seen == "" && deadline.Err() == nil; i++ {
		ctrCfg, err := b.WriteContainerConfig(testbed.ContainerConfig{Name: fmt.Sprintf("ev%d", i), Image: b.Busybox.Ref, Command: []string{"sleep", "3600"}})
		if err != nil {
			t.Fatal(err)
		}
		r := c.Run(ctx, "create", podID, ctrCfg, pod)
		if r.Err != nil {
			t.Fatal(r)
		}
		id := strings.TrimSpace(r.Stdout)
		waitCtx, wcancel := context.WithTimeout(deadline, 2*time.Second)
		if waitUntil(waitCtx, func() bool { return strings.Contains(out.String(), id) }) {
			seen = id
		}
		wcancel()
	}
	if seen == "" {
		t.Fatalf("no container event arrived; crictl events printed:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "CONTAINER_CREATED_EVENT") {
		t.Errorf("event for %s lacks its type:\n%s", seen, out.String())
	}
	stop()
	if exited, _ := pg.Process().Exited(); exited {
		t.Fatal("pullguard exited when the events client went away")
	}
	if r := c.Run(ctx, "rmp", "-f", podID); r.Err != nil {
		t.Errorf("remove pod: %v", r)
	}
}
