package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullguard/pullguard/integration/testbed"
)

func TestContainerdRestartWhilePullguardRuns(t *testing.T) {
	t.Parallel()
	began := time.Now()
	b := ownBed(t) // stops containerd: must not disturb the shared bed
	t.Logf("own bed up in %s", time.Since(began).Round(time.Millisecond))
	ctx := testCtx(t)
	img := pushTiny(t, b, "restart/img:v1")
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: inlineTOML("cluster", "", rule{name: b.Registry.Host + "/*"})})
	cli, err := testbed.DialCRI(pg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	version := func() error {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err := cli.Runtime.Version(cctx, &runtimeapi.VersionRequest{})
		return err
	}
	if err := version(); err != nil {
		t.Fatalf("Version through pullguard before the restart: %v", err)
	}

	stopStart := time.Now()
	if err := b.Containerd.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("containerd stopped in %s", time.Since(stopStart).Round(time.Millisecond))
	downCall := time.Now()
	err = version()
	t.Logf("Version with containerd down answered in %s", time.Since(downCall).Round(time.Millisecond))
	if status.Code(err) != codes.Unavailable {
		t.Errorf("with containerd down, Version through pullguard: got %v (code %s), want code Unavailable", err, status.Code(err))
	}
	if r := pg.Crictl.Run(ctx, "images"); r.Err == nil {
		t.Errorf("crictl images succeeded with containerd down: %v", r)
	} else {
		t.Logf("crictl images with containerd down failed in %s: %s", r.Took.Round(time.Millisecond), strings.TrimSpace(r.Stderr))
	}
	if exited, _ := pg.Process().Exited(); exited {
		t.Fatal("pullguard exited when containerd went away")
	}

	restart := time.Now()
	if err := b.Containerd.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("containerd ready again in %s", time.Since(restart).Round(time.Millisecond))
	if !waitUntil(ctx, func() bool { return version() == nil }) {
		t.Fatalf("Version through pullguard never recovered after containerd came back: %v", version())
	}
	t.Logf("calls through pullguard work again %s after containerd's restart", time.Since(restart).Round(time.Millisecond))
	r := pg.Crictl.Run(ctx, "pull", img.Ref)
	if r.Err != nil {
		t.Fatalf("pull through the same pullguard after the restart: %v", r)
	}
	t.Logf("pull after the restart took %s", r.Took.Round(time.Millisecond))
	assertPresent(t, ctx, b, img.Ref)
}
