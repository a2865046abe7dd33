package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pullguard/pullguard/integration/testbed"
)

// The gate inside containerd: every create is decided by pullguard's NRI plugin, which
// containerd's default validator requires.

// startContainer creates and starts a container in pod from cfg straight on containerd (the
// runtime endpoint is containerd's, as kubelet's is); it returns the crictl results.
func createIn(ctx context.Context, b *testbed.Bed, podID, ctrCfg, podCfg string) testbed.Result {
	return b.Crictl.Run(ctx, "create", podID, ctrCfg, podCfg)
}

// assertRan checks that the container ctrID ran the content marked marker.
func assertRan(t *testing.T, ctx context.Context, b *testbed.Bed, ctrID, marker string) {
	t.Helper()
	if r := b.Crictl.Run(ctx, "start", ctrID); r.Err != nil {
		t.Fatalf("start %s: %v", ctrID, r)
	}
	r := b.Crictl.Run(ctx, "exec", ctrID, "cat", "/etc/marker")
	if r.Err != nil || strings.TrimSpace(r.Stdout) != marker {
		t.Fatalf("exec in %s: want marker %q: %v", ctrID, marker, r)
	}
}

func TestNRISignedRunsUnsignedRefused(t *testing.T) {
	t.Parallel()
	b := ownBed(t)
	ctx := testCtx(t)
	k := newSigningKit(t)
	host := b.Registry.Host
	signed := pushRunnable(t, b, "nri/signed:v1")
	sign(t, signed, k.releaseLeaf, "application/jose+json", nil)
	unsigned := pushRunnable(t, b, "nri/unsigned:v1")
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() +
		policyTOML("strict", "nri-strict", entry{name: host + "/nri/*", trust: true, signers: []string{"release"}})})

	podID, podCfg := runPod(t, ctx, b, pg, "p", "nri-strict")
	if r := pg.Crictl.Run(ctx, "pull", "--pod-config", podCfg, signed.Ref); r.Err != nil {
		t.Fatalf("pull of the signed image: %v", r)
	}
	r := createIn(ctx, b, podID, containerConfig(t, b, "ok", signed.Ref), podCfg)
	if r.Err != nil {
		t.Fatalf("create of the signed image: %v\n%s", r, pg.Logs())
	}
	assertRan(t, ctx, b, strings.TrimSpace(r.Stdout), t.Name()+" nri/signed:v1")

	// Pulled around pullguard: containerd holds it, pullguard never verified it.
	ctrPull(t, ctx, b, unsigned.Ref)
	cfg := containerConfig(t, b, "bad", unsigned.Ref)
	r = createIn(ctx, b, podID, cfg, podCfg)
	assertDenial(t, r, denialPrefix, `for namespace "nri-strict"`, "has not verified")
	assertNoContainers(t, ctx, b, podID, "ok")
	// Verified in the background meanwhile: the retry is decided on what was found.
	var last testbed.Result
	if !waitUntil(ctx, func() bool {
		last = createIn(ctx, b, podID, cfg, podCfg)
		return last.Err != nil && strings.Contains(last.Output(), "found no signature")
	}) {
		t.Fatalf("the retry never said why: %v", last)
	}
	assertNoContainers(t, ctx, b, podID, "ok")
}

func TestNRIFailsClosedWhilePullguardIsDown(t *testing.T) {
	t.Parallel()
	b := ownBed(t)
	ctx := testCtx(t)
	pg := startPullguard(t, b, lifecyclePolicy(b, "nri-down"))
	podID, podCfg := runPod(t, ctx, b, pg, "p", "nri-down")
	if r := pg.Crictl.Run(ctx, "pull", "--pod-config", podCfg, b.Busybox.Ref); r.Err != nil {
		t.Fatal(r)
	}
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	r := createIn(ctx, b, podID, containerConfig(t, b, "while-down", b.Busybox.Ref), podCfg)
	if r.Err == nil || !strings.Contains(r.Output(), `required plugin "pullguard" not present`) {
		t.Fatalf("create while pullguard is down: want containerd's refusal: %v", r)
	}
	assertNoContainers(t, ctx, b, podID)
	start := time.Now()
	if err := pg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("pullguard back and registered in %s", time.Since(start).Round(time.Millisecond))
	if r := createIn(ctx, b, podID, containerConfig(t, b, "after", b.Busybox.Ref), podCfg); r.Err != nil {
		t.Fatalf("create once pullguard is back (containerd not restarted): %v", r)
	}
}
