// Package e2e drives `pullguard serve` in front of a real containerd with crictl, as kubelet
// would. One registry + containerd pair is shared by the package (TestMain); every test starts
// its own pullguard with its own policies and uses its own image names. Tests that restart
// containerd get a bed of their own.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pullguard/pullguard/integration/testbed"
)

var shared struct {
	bed *testbed.Bed
	err error
}

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	shared.bed, shared.err = testbed.Start(ctx, testbed.Options{Logger: logger})
	if shared.err == nil {
		// Build pullguard once up front so a compile error shows once, not per test.
		_, shared.err = shared.bed.PullguardBinary(ctx)
	}
	cancel()
	code := m.Run()
	if shared.bed != nil {
		if err := shared.bed.Close(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "close test bed:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// sharedBed returns the package's bed; it skips under -short and fails (naming `make tools`
// when that is the cause) if the bed could not start.
func sharedBed(t *testing.T) *testbed.Bed {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs containerd, registry and crictl (skipped with -short)")
	}
	if shared.err != nil {
		t.Fatalf("test bed: %v", shared.err)
	}
	return shared.bed
}

// ownBed starts a bed for one test whose containerd has NRI requiring pullguard: for tests that
// create containers (every registered pullguard validates every create of its containerd) or
// stop or restart containerd.
func ownBed(t *testing.T) *testbed.Bed {
	t.Helper()
	return ownBedWith(t, testbed.Options{})
}

// ownBedWith is ownBed with options (NRI is always on).
func ownBedWith(t *testing.T, opts testbed.Options) *testbed.Bed {
	t.Helper()
	sb := sharedBed(t) // same skip/fail rules
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pgBin, err := sb.PullguardBinary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	opts.NRI, opts.PullguardBin = true, pgBin
	opts.Logger = slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := testbed.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start own test bed: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log (own bed):\n%s", b.Containerd.Process().LogTail(6000))
		}
		if err := b.Close(context.Background()); err != nil {
			t.Errorf("close own test bed: %v", err)
		}
	})
	return b
}

// startPullguard starts pullguard on b and stops it when the test ends, showing its log if the
// test failed.
func startPullguard(t *testing.T, b *testbed.Bed, opts testbed.PullguardOptions) *testbed.Pullguard {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pg, err := b.StartPullguard(ctx, opts)
	if err != nil {
		t.Fatalf("start pullguard: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pullguard log (%s):\n%s", pg.ConfigPath, lastBytes(pg.Logs(), 6000))
		}
		began := time.Now()
		if err := pg.Stop(); err != nil {
			t.Errorf("stop pullguard: %v", err)
		}
		t.Logf("pullguard stopped in %s", time.Since(began).Round(time.Millisecond))
	})
	return pg
}

// pushTiny pushes a small image unique to this test as HOST/repoTag.
func pushTiny(t *testing.T, b *testbed.Bed, repoTag string) testbed.PushedImage {
	t.Helper()
	img, err := testbed.TinyImage(t.Name() + " " + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := b.Registry.Push(ctx, repoTag, img)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// podConfig writes a pod sandbox config for namespace ns (crictl's --pod-config / runp).
func podConfig(t *testing.T, b *testbed.Bed, name, ns string) string {
	t.Helper()
	p, err := b.WritePodConfig(testbed.PodConfig{Name: name, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// assertAbsent checks containerd itself (ctr, and crictl straight to containerd) does not hold ref.
func assertAbsent(t *testing.T, ctx context.Context, b *testbed.Bed, ref string) {
	t.Helper()
	has, err := b.ContainerdHasImage(ctx, ref, true)
	if err != nil {
		t.Fatal(err)
	}
	if has {
		t.Errorf("containerd holds %s after a denied pull (ctr images ls):\n%s", ref, b.Ctr(ctx, "images", "ls", "-q").Stdout)
	}
	if r := b.Crictl.Run(ctx, "inspecti", ref); r.Err == nil {
		t.Errorf("crictl (direct) finds %s after a denied pull: %v", ref, r)
	}
}

// assertPresent checks containerd itself holds ref.
func assertPresent(t *testing.T, ctx context.Context, b *testbed.Bed, ref string) {
	t.Helper()
	has, err := b.ContainerdHasImage(ctx, ref, false)
	if err != nil {
		t.Fatal(err)
	}
	if !has {
		t.Errorf("containerd does not hold %s after an admitted pull (ctr images ls):\n%s", ref, b.Ctr(ctx, "images", "ls", "-q").Stdout)
	}
}

func lastBytes(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// waitUntil polls cond until it holds or ctx ends.
func waitUntil(ctx context.Context, cond func() bool) bool {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
	return true
}

// tWriter sends a logger's lines to the test log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
