package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pullguard/pullguard/daemonset/hoststate"
	"github.com/pullguard/pullguard/integration/testbed"
	"github.com/pullguard/pullguard/plugin/running"
	"github.com/pullguard/pullguard/plugin/trust/trusttest"
	"github.com/pullguard/pullguard/plugin/va/vatest"
)

// Running workloads: containers already running are re-decided on containerd's view when what
// a decision rests on changes, and `pullguard status` (the admin socket) says so.

// runningStatus reads pullguard's view of the running containers, as `pullguard status` does.
func runningStatus(t *testing.T, ctx context.Context, pg *testbed.Pullguard) running.Status {
	t.Helper()
	st, _, err := running.FetchStatus(ctx, pg.AdminSocket)
	if err != nil {
		t.Fatal(err)
	}
	return *st
}

// waitContainer waits until the running container named name satisfies cond, and returns it.
func waitContainer(t *testing.T, ctx context.Context, pg *testbed.Pullguard, name string, within time.Duration, what string, cond func(running.Container) bool) running.Container {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var last running.Container
	if !waitUntil(wctx, func() bool {
		for _, c := range runningStatus(t, ctx, pg).Containers {
			if c.Name == name {
				last = c
				return cond(c)
			}
		}
		return false
	}) {
		t.Fatalf("container %s: never %s within %s; last seen: %+v", name, what, within, last)
	}
	return last
}

func TestRunningContainersAreRedecided(t *testing.T) {
	t.Parallel()
	b := ownBed(t)
	ctx := testCtx(t)
	k := newSigningKit(t)
	host := b.Registry.Host
	img := pushRunnable(t, b, "run/app:v1")
	sign(t, img, k.releaseLeaf, trusttest.JWS, nil)
	attachReport(t, nil, img, report{sarifMediaType, 2 * time.Hour, []vatest.Vuln{medium}, k.scannerLeaf})
	policy := func(maxSeverity string) string {
		return policyTOML("run", "run", entry{name: host + "/run/*", trust: true, signers: []string{"release"},
			va: &vaKnobs{maxSeverity: maxSeverity}, running: "evict", evictAfter: "1h"})
	}
	const recheck = "[running]\nrecheck_interval = \"2s\"\n"
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() + recheck + policy("high")})

	podID, podCfg := runPod(t, ctx, b, pg, "app", "run")
	if r := pg.Crictl.Run(ctx, "pull", "--pod-config", podCfg, img.Ref); r.Err != nil {
		t.Fatal(r)
	}
	r := createIn(ctx, b, podID, containerConfig(t, b, "app", img.Ref), podCfg)
	if r.Err != nil {
		t.Fatal(r)
	}
	if r := b.Crictl.Run(ctx, "start", strings.TrimSpace(r.Stdout)); r.Err != nil {
		t.Fatal(r)
	}
	c := waitContainer(t, ctx, pg, "app", 30*time.Second, "admitted", func(c running.Container) bool { return c.Verdict == running.Admitted })
	if c.Pod.Namespace != "run" || c.ImageID != img.ID || c.Action != "evict" {
		t.Errorf("status of the running container: %+v", c)
	}

	// A critical CVE is published: the scanner attaches a newer signed report.
	began := time.Now()
	attachReport(t, nil, img, report{sarifMediaType, time.Minute, []vatest.Vuln{critical}, k.scannerLeaf})
	c = waitContainer(t, ctx, pg, "app", 30*time.Second, "denied after the new report", func(c running.Container) bool { return c.Verdict == running.Denied })
	t.Logf("the new report was seen %s after it was attached (recheck_interval 2s)", time.Since(began).Round(time.Millisecond))
	if !strings.Contains(c.Reason, critical.ID) || c.EvictAt == nil || c.EvictAt.Sub(c.Since) != time.Hour {
		t.Errorf("denied container: want the CVE as the reason and eviction an hour after: %+v", c)
	}
	if lines := pg.LogLines("running container no longer admitted", `"namespace":"run"`, critical.ID); len(lines) != 1 {
		t.Errorf("want one audit line for the verdict change, got %d:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if _, body, _ := pg.Admin(ctx, "/metrics"); !strings.Contains(string(body), `pullguard_running_containers{namespace="run",verdict="deny"} 1`) {
		t.Errorf("metrics lack the denied running container:\n%s", grepLines(string(body), "pullguard_running"))
	}
	out, code := pullguardStatus(t, ctx, b, pg)
	if code != 1 || !strings.Contains(out, "deny") || !strings.Contains(out, critical.ID) {
		t.Errorf("pullguard status: exit %d, want 1 listing the denial:\n%s", code, out)
	}

	// The policy tolerates critical findings now: the verdict clears.
	cfg, err := os.ReadFile(pg.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := hoststate.WriteFileAtomic(pg.ConfigPath, []byte(strings.Replace(string(cfg), policy("high"), policy("critical"), 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	waitContainer(t, ctx, pg, "app", 30*time.Second, "admitted again after the policy change", func(c running.Container) bool { return c.Verdict == running.Admitted })
	if lines := pg.LogLines("running container admitted again", `"namespace":"run"`); len(lines) != 1 {
		t.Errorf("want one audit line for the verdict clearing, got %d", len(lines))
	}

	// A registry outage is no verdict: re-checks fail, the verdict stays.
	if err := b.Registry.Stop(); err != nil {
		t.Fatal(err)
	}
	failed := strings.Count(pg.Logs(), "registry endpoint failed")
	if !waitUntil(ctx, func() bool { return strings.Count(pg.Logs(), "registry endpoint failed") >= failed+2 }) {
		t.Fatal("no re-check reached the stopped registry")
	}
	if c := waitContainer(t, ctx, pg, "app", time.Second, "still listed", func(running.Container) bool { return true }); c.Verdict != running.Admitted {
		t.Errorf("verdict changed during the registry outage: %+v", c)
	}

	// Restarted, pullguard re-decides everything containerd lists when it registers.
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := pg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	c = waitContainer(t, ctx, pg, "app", 30*time.Second, "re-decided after pullguard's restart", func(c running.Container) bool { return c.Verdict == running.Admitted })
	if c.ImageID != img.ID {
		t.Errorf("after the restart: %+v", c)
	}
	if st := runningStatus(t, ctx, pg); !st.Synchronized || len(st.Containers) != 1 {
		t.Errorf("after the restart, want the one running container from containerd's list: %+v", st)
	}
}

// pullguardStatus runs `pullguard status` against pg and returns its output and exit code.
func pullguardStatus(t *testing.T, ctx context.Context, b *testbed.Bed, pg *testbed.Pullguard) (string, int) {
	t.Helper()
	bin, err := b.PullguardBinary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return runExit(t, ctx, bin, "status", "--config", pg.ConfigPath)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// runExit runs a command and returns its combined output and exit code.
func runExit(t *testing.T, ctx context.Context, bin string, args ...string) (string, int) {
	t.Helper()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("%s %v: %v\n%s", bin, args, err, out)
	return "", -1
}
