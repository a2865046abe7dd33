package e2e

import (
	"strings"
	"testing"

	"github.com/pullguard/pullguard/integration/testbed"
)

// TestCreateContainerChecksPreloadedImage: an image that reached containerd without pullguard
// (pre-loaded, or pulled for a laxer namespace) is checked again when a container is created
// from it, inside containerd, so `imagePullPolicy: IfNotPresent` is no bypass.
func TestCreateContainerChecksPreloadedImage(t *testing.T) {
	t.Parallel()
	b := ownBed(t)
	ctx := testCtx(t)
	runnable, err := testbed.RunnableImage(b.Tools.Busybox, "preloaded")
	if err != nil {
		t.Fatal(err)
	}
	pre, err := b.Registry.Push(ctx, "preloaded/busybox:1", runnable)
	if err != nil {
		t.Fatal(err)
	}
	if r := b.Crictl.Run(ctx, "pull", pre.Ref); r.Err != nil { // straight to containerd
		t.Fatal(r)
	}
	pg := startPullguard(t, b, lifecyclePolicy(b, "guarded")) // admits only HOST/testbed/*
	c := pg.Crictl
	pod := podConfig(t, b, "cc", "guarded")
	podID := strings.TrimSpace(c.Run(ctx, "runp", pod).Stdout)
	if podID == "" {
		t.Fatal("runp through pullguard returned no pod id")
	}
	t.Cleanup(func() { b.Crictl.Run(testCtx(t), "rmp", "-f", podID) })

	denied, err := b.WriteContainerConfig(testbed.ContainerConfig{Name: "pre", Image: pre.Ref, Command: []string{"sleep", "3600"}})
	if err != nil {
		t.Fatal(err)
	}
	r := createDecided(t, ctx, b, podID, denied, pod)
	if r.Err == nil || !strings.Contains(r.Output(), denialPrefix) {
		t.Fatalf("creating a container from a pre-loaded image the namespace does not admit: want a %q denial: %v", denialPrefix, r)
	}
	if ids := strings.TrimSpace(b.Crictl.Run(ctx, "ps", "-a", "-q", "--pod", podID).Stdout); ids != "" {
		t.Errorf("containerd holds containers after the denied create: %q", ids)
	}

	if r := c.Run(ctx, "pull", "--pod-config", pod, b.Busybox.Ref); r.Err != nil {
		t.Fatal(r)
	}
	admitted, err := b.WriteContainerConfig(testbed.ContainerConfig{Name: "ok", Image: b.Busybox.Ref, Command: []string{"sleep", "3600"}})
	if err != nil {
		t.Fatal(err)
	}
	if r := createDecided(t, ctx, b, podID, admitted, pod); r.Err != nil {
		t.Fatalf("creating a container from an admitted image: %v", r)
	}
}
