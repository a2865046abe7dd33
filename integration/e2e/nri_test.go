package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullguard/pullguard/integration/testbed"
	"github.com/pullguard/pullguard/plugin/trust/trusttest"
)

// The gate inside containerd: every create is decided by pullguard's NRI plugin, which
// containerd's default validator requires.

// startContainer creates and starts a container in pod from cfg straight on containerd (the
// runtime endpoint is containerd's, as kubelet's is); it returns the crictl results.
func createIn(ctx context.Context, b *testbed.Bed, podID, ctrCfg, podCfg string) testbed.Result {
	return b.Crictl.Run(ctx, "create", podID, ctrCfg, podCfg)
}

// said is crictl's output with the gRPC message's quotes as sent (crictl escapes them).
func said(r testbed.Result) string { return strings.ReplaceAll(r.Output(), `\"`, `"`) }

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
		return last.Err != nil && strings.Contains(said(last), "found no signature")
	}) {
		t.Fatalf("the retry never said why: %v", last)
	}
	assertNoContainers(t, ctx, b, podID, "ok")
}

// TestNRIFailsClosedWhilePullguardIsDown: with pullguard stopped, the node keeps running what runs
// and kubelet keeps managing it (its runtime calls never cross pullguard), new pulls fail with
// Unavailable, and containerd refuses every create; once pullguard is back, creates work again
// without restarting containerd.
func TestNRIFailsClosedWhilePullguardIsDown(t *testing.T) {
	t.Parallel()
	b := ownBed(t)
	ctx := testCtx(t)
	pg := startPullguard(t, b, lifecyclePolicy(b, "nri-down"))
	podID, podCfg := runPod(t, ctx, b, pg, "p", "nri-down")
	if r := pg.Crictl.Run(ctx, "pull", "--pod-config", podCfg, b.Busybox.Ref); r.Err != nil {
		t.Fatal(r)
	}
	running, err := b.WriteContainerConfig(testbed.ContainerConfig{Name: "running", Image: b.Busybox.Ref,
		Command: []string{"sh", "-c", "echo up-before-the-outage; exec sleep 3600"}})
	if err != nil {
		t.Fatal(err)
	}
	r := createIn(ctx, b, podID, running, podCfg)
	if r.Err != nil {
		t.Fatal(r)
	}
	ctrID := strings.TrimSpace(r.Stdout)
	if r := b.Crictl.Run(ctx, "start", ctrID); r.Err != nil {
		t.Fatal(r)
	}
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}

	// What runs keeps running, and kubelet's runtime calls work. They go to containerd's socket;
	// crictl, unlike kubelet, checks both endpoints at each start, so it is pointed at containerd
	// for both here.
	c := b.Crictl
	if r := c.Run(ctx, "inspect", "-o", "go-template", "--template", "{{.status.state}}", ctrID); r.Err != nil || strings.TrimSpace(r.Stdout) != "CONTAINER_RUNNING" {
		t.Errorf("the running container while pullguard is down: %v", r)
	}
	if r := c.Run(ctx, "exec", ctrID, "cat", "/etc/marker"); r.Err != nil || strings.TrimSpace(r.Stdout) != "busybox" {
		t.Errorf("exec while pullguard is down: %v", r)
	}
	if r := c.Run(ctx, "logs", ctrID); r.Err != nil || !strings.Contains(r.Output(), "up-before-the-outage") {
		t.Errorf("logs while pullguard is down: %v", r)
	}
	// A pull through kubelet's image endpoint fails: the socket is gone.
	cli, err := testbed.DialCRI(pg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = cli.Image.PullImage(pctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: b.Busybox.Ref}})
	cancel()
	cli.Close()
	if status.Code(err) != codes.Unavailable {
		t.Errorf("pull while pullguard is down: %v, want code Unavailable", err)
	}

	// containerd notices the plugin is gone at the first call it makes to it ("ttrpc: closed");
	// from then on its default validator refuses for want of a required plugin.
	for i, want := range []string{"", `required plugin "pullguard" not present`} {
		r := createIn(ctx, b, podID, containerConfig(t, b, fmt.Sprintf("while-down-%d", i), b.Busybox.Ref), podCfg)
		if r.Err == nil || !strings.Contains(said(r), want) {
			t.Fatalf("create %d while pullguard is down: want containerd's refusal %q: %v", i, want, r)
		}
	}
	assertNoContainers(t, ctx, b, podID, "running")
	if r := c.Run(ctx, "stop", "--timeout", "2", ctrID); r.Err != nil {
		t.Errorf("stop while pullguard is down: %v", r)
	}

	start := time.Now()
	if err := pg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("pullguard back and registered in %s", time.Since(start).Round(time.Millisecond))
	if r := createIn(ctx, b, podID, containerConfig(t, b, "after", b.Busybox.Ref), podCfg); r.Err != nil {
		t.Fatalf("create once pullguard is back (containerd not restarted): %v", r)
	}
}

// createDecided creates a container straight on containerd and returns the result once
// pullguard has decided: an image pullguard has not verified yet is refused with "has not
// verified" while it is verified in the background, and kubelet's retry is decided on what was
// found. Retries are bounded by ctx.
func createDecided(t *testing.T, ctx context.Context, b *testbed.Bed, podID, ctrCfg, podCfg string) testbed.Result {
	t.Helper()
	var r testbed.Result
	if !waitUntil(ctx, func() bool {
		r = createIn(ctx, b, podID, ctrCfg, podCfg)
		return r.Err == nil || !strings.Contains(said(r), "has not verified")
	}) {
		t.Fatalf("pullguard never decided the create: %v", r)
	}
	return r
}

// TestBypassClientStringsIgnored: whatever strings the CRI request carries (the pod's
// user_specified_image, a short image ID, a sandbox config claiming another namespace), the
// decision is made on what containerd runs, in the namespace containerd's sandbox store holds.
func TestBypassClientStringsIgnored(t *testing.T) {
	t.Parallel()
	b := ownBed(t)
	ctx := testCtx(t)
	k := newSigningKit(t)
	host := b.Registry.Host
	signed := pushRunnable(t, b, "strings/good:v1")
	sign(t, signed, k.releaseLeaf, trusttest.JWS, nil)
	evil := pushRunnable(t, b, "strings/evil:v1")
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() +
		policyTOML("strict", "strings-strict", entry{name: host + "/strings/*", trust: true, signers: []string{"release"}},
			// Image IDs and short IDs parse as Docker Hub names ("sha256:<hex>" as
			// docker.io/library/sha256): a lax rule there must admit nothing through them.
			entry{name: "docker.io/library/*"}) +
		policyTOML("system", "kube-system", entry{name: "*"})})
	if r := pullIn(t, ctx, b, pg, "strings-strict", "s", signed.Ref); r.Err != nil {
		t.Fatalf("pull of the signed image: %v", r)
	}
	if r := pullIn(t, ctx, b, pg, "kube-system", "s", evil.Ref); r.Err != nil {
		t.Fatalf("pull of the other image for kube-system: %v", r)
	}
	pod, podCfg := runPod(t, ctx, b, pg, "s", "strings-strict")
	shortID := strings.TrimPrefix(evil.ID, "sha256:")[:12]
	claimsSystem, err := b.WritePodConfig(testbed.PodConfig{Name: "s", Namespace: "kube-system"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, cfg, podCfg string
	}{
		{"user_specified_image names the signed digest", kubeletContainerConfig(t, b, "spec", evil.Ref, signed.Pinned()), podCfg},
		{"short image id with prefix", containerConfig(t, b, "short1", "sha256:"+shortID), podCfg},
		{"short image id", containerConfig(t, b, "short2", shortID), podCfg},
		{"sandbox config claims kube-system", containerConfig(t, b, "claim", evil.Ref), claimsSystem},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := createDecided(t, ctx, b, pod, tc.cfg, tc.podCfg)
			assertDenial(t, r, denialPrefix, `for namespace "strings-strict"`, evil.ID, "found no signature")
		})
	}
	assertNoContainers(t, ctx, b, pod)
	if r := createDecided(t, ctx, b, pod, containerConfig(t, b, "good", signed.Ref), podCfg); r.Err != nil {
		t.Errorf("the signed image in the same pod (control): %v", r)
	}
}

// TestBypassSandboxImage: containerd pulls and runs the sandbox (pause) image itself, and never
// asks NRI to validate a sandbox. pullguard decides it ahead of time under the cluster policy and
// refuses new sandboxes while it is denied.
func TestBypassSandboxImage(t *testing.T) {
	t.Parallel()
	b := ownBed(t)
	ctx := testCtx(t)
	k := newSigningKit(t)
	pauseRepo := strings.TrimSuffix(b.Pause.Ref, ":1")
	pg := startPullguard(t, b, testbed.PullguardOptions{NoSandboxPolicy: true, Config: k.configTOML() +
		"[cache]\nnegative_ttl = \"1s\"\n" +
		policyTOML("cluster", "", entry{name: pauseRepo, trust: true, signers: []string{"release"}}) +
		policyTOML("ns", "sandbox-ns", entry{name: b.Registry.Host + "/testbed/*"})})
	podCfg := podConfig(t, b, "sb", "sandbox-ns")
	var r testbed.Result
	if !waitUntil(ctx, func() bool {
		r = pg.Crictl.Run(ctx, "runp", podCfg)
		return r.Err != nil && !strings.Contains(said(r), "has not decided")
	}) {
		t.Fatalf("runp with an unsigned sandbox image: want a refusal: %v", r)
	}
	assertDenial(t, r, "pod sandbox refused", "sandbox image", "found no signature", b.Pause.Digest)
	if out := b.Crictl.Run(ctx, "pods", "-q", "--state", "ready").Stdout; strings.TrimSpace(out) != "" {
		t.Errorf("a sandbox is running after the refusal: %q", out)
	}
	// Signed now; pullguard is told its inputs changed (as a policy or trust store edit does).
	sign(t, b.Pause, k.releaseLeaf, trusttest.JWS, nil)
	if err := pg.Process().Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	// Each try is a pod of its own with a deadline of its own, as kubelet's
	// would be: a runp stuck in containerd (seen once under load, before
	// pullguard was asked) must not hold the pod name or the test's time.
	try := 0
	if !waitUntil(ctx, func() bool {
		try++
		tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		r = pg.Crictl.Run(tctx, "runp", podConfig(t, b, fmt.Sprintf("sb-%d", try), "sandbox-ns"))
		return r.Err == nil
	}) {
		t.Fatalf("runp once the sandbox image is signed (%d tries): %v", try, r)
	}
	t.Logf("admitted at try %d after signing", try)
	b.Crictl.Run(ctx, "rmp", "-f", strings.TrimSpace(r.Stdout))
}

// TestNRIAnswerPastTheDeadlineRefuses: an answer containerd does not get within its
// plugin_request_timeout fails the create (and containerd drops the plugin, which re-registers
// by itself); an answer pullguard cannot give within its own [nri] timeout refuses the create
// too, without getting the plugin dropped.
func TestNRIAnswerPastTheDeadlineRefuses(t *testing.T) {
	t.Parallel()
	t.Run("containerd's timeout", func(t *testing.T) {
		t.Parallel()
		b := ownBed(t)
		ctx := testCtx(t)
		// A decision slower than containerd's 2s plugin_request_timeout, under an answer deadline
		// of pullguard's own that is not (containerd_config is left empty: pullguard would
		// otherwise refuse to start with such a deadline).
		pg := startPullguard(t, b, testbed.PullguardOptions{Config: lifecyclePolicy(b, "late").Config,
			NRI: "containerd_config = \"\"\ntimeout = \"10s\"", Env: []string{"PULLGUARD_TEST_NRI_SLOWDOWN=3s"}})
		podID, podCfg := runPod(t, ctx, b, pg, "p", "late")
		if r := pg.Crictl.Run(ctx, "pull", "--pod-config", podCfg, b.Busybox.Ref); r.Err != nil {
			t.Fatal(r)
		}
		r := createIn(ctx, b, podID, containerConfig(t, b, "late", b.Busybox.Ref), podCfg)
		if r.Err == nil || !strings.Contains(said(r), "10-pullguard") {
			t.Fatalf("create whose validation outlives containerd's timeout: want containerd's refusal naming the plugin: %v", r)
		}
		t.Logf("containerd said: %s", said(r))
		assertNoContainers(t, ctx, b, podID)
		if !waitUntil(ctx, func() bool { return strings.Count(pg.Logs(), registeredLine) >= 2 }) {
			t.Errorf("pullguard did not re-register after containerd dropped it:\n%s", lastBytes(pg.Logs(), 3000))
		}
	})
	t.Run("pullguard's own deadline", func(t *testing.T) {
		t.Parallel()
		b := ownBed(t)
		ctx := testCtx(t)
		pg := startPullguard(t, b, testbed.PullguardOptions{Config: lifecyclePolicy(b, "slow").Config,
			NRI: `timeout = "300ms"`, Env: []string{"PULLGUARD_TEST_NRI_SLOWDOWN=1s"}})
		podID, podCfg := runPod(t, ctx, b, pg, "p", "slow")
		if r := pg.Crictl.Run(ctx, "pull", "--pod-config", podCfg, b.Busybox.Ref); r.Err != nil {
			t.Fatal(r)
		}
		r := createIn(ctx, b, podID, containerConfig(t, b, "slow", b.Busybox.Ref), podCfg)
		assertDenial(t, r, denialPrefix, "could not decide", "within 300ms")
		assertNoContainers(t, ctx, b, podID)
		if strings.Count(pg.Logs(), registeredLine) != 1 {
			t.Errorf("the plugin was dropped: pullguard's own deadline should answer in time")
		}
	})
}

// registeredLine is what pullguard logs once containerd's NRI has it registered.
const registeredLine = "registered with containerd's NRI"

// TestServeRefusesWhenContainerdDoesNotRequireIt: enforcement must never be silently off. With
// containerd's NRI disabled (the shared bed's containerd), or its default validator not
// requiring pullguard, `pullguard serve` in enforce mode refuses to start and says why.
func TestServeRefusesWhenContainerdDoesNotRequireIt(t *testing.T) {
	t.Parallel()
	b := sharedBed(t)
	ctx := testCtx(t)
	bin, err := b.PullguardBinary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	noValidator := filepath.Join(dir, "containerd-no-validator.toml")
	if err := os.WriteFile(noValidator, []byte("version = 3\n[plugins.'io.containerd.nri.v1.nri']\n  disable = false\n  socket_path = \"/tmp/x/nri.sock\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, containerdConfig, want string }{
		{"NRI disabled", b.Containerd.Config, "NRI is disabled in containerd"},
		{"validator off", noValidator, "default validator is off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := b.PullguardConfig(dir, testbed.PullguardOptions{})
			cfg = strings.Replace(cfg, `mode = "pull-only"`, fmt.Sprintf("mode = \"enforce\"\nsocket = \"/tmp/x/nri.sock\"\ncontainerd_config = %q", tc.containerdConfig), 1)
			cfgPath := filepath.Join(dir, "config.toml")
			if err := os.MkdirAll(filepath.Join(dir, "policies"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(cctx, bin, "serve", "--config", cfgPath).CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("serve: want exit 2, got %v:\n%s", err, out)
			}
			for _, want := range []string{"refusing to start: enforcement would be off", tc.want, "pull-only"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("serve's refusal lacks %q:\n%s", want, out)
				}
			}
		})
	}
}
