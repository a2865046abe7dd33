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

// TestContainerdRestartWhilePullguardRuns: image calls through pullguard fail Unavailable while
// containerd is down and work again once it is back; the NRI plugin re-registers by itself (no
// Shutdown arrives, the stub's connection just ends), and creates are decided again.
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
	fsInfo := func() error {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err := cli.Image.ImageFsInfo(cctx, &runtimeapi.ImageFsInfoRequest{})
		return err
	}
	if err := fsInfo(); err != nil {
		t.Fatalf("ImageFsInfo through pullguard before the restart: %v", err)
	}
	podID, podCfg := runPod(t, ctx, b, pg, "r", "restart")
	registrations := strings.Count(pg.Logs(), "registered with containerd's NRI")

	stopStart := time.Now()
	if err := b.Containerd.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("containerd stopped in %s", time.Since(stopStart).Round(time.Millisecond))
	downCall := time.Now()
	err = fsInfo()
	t.Logf("ImageFsInfo with containerd down answered in %s", time.Since(downCall).Round(time.Millisecond))
	if status.Code(err) != codes.Unavailable {
		t.Errorf("with containerd down, ImageFsInfo through pullguard: got %v (code %s), want code Unavailable", err, status.Code(err))
	}
	if r := pg.Crictl.Run(ctx, "pull", img.Ref); r.Err == nil {
		t.Errorf("crictl pull succeeded with containerd down: %v", r)
	}
	if exited, _ := pg.Process().Exited(); exited {
		t.Fatal("pullguard exited when containerd went away")
	}

	restart := time.Now()
	if err := b.Containerd.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("containerd ready again in %s", time.Since(restart).Round(time.Millisecond))
	if !waitUntil(ctx, func() bool { return fsInfo() == nil }) {
		t.Fatalf("ImageFsInfo through pullguard never recovered after containerd came back: %v", fsInfo())
	}
	if !waitUntil(ctx, func() bool { return strings.Count(pg.Logs(), "registered with containerd's NRI") > registrations }) {
		t.Fatalf("pullguard never re-registered with containerd's NRI:\n%s", lastBytes(pg.Logs(), 4000))
	}
	t.Logf("image calls work and the plugin is registered again %s after containerd's restart", time.Since(restart).Round(time.Millisecond))
	r := pg.Crictl.Run(ctx, "pull", img.Ref)
	if r.Err != nil {
		t.Fatalf("pull through the same pullguard after the restart: %v", r)
	}
	assertPresent(t, ctx, b, img.Ref)
	if r := pg.Crictl.Run(ctx, "pull", b.Busybox.Ref); r.Err != nil {
		t.Fatal(r)
	}
	if r := createDecided(t, ctx, b, podID, containerConfig(t, b, "after", b.Busybox.Ref), podCfg); r.Err != nil {
		t.Fatalf("create after containerd's restart: %v", r)
	}
	if lines := pg.LogLines(`"op":"create"`, `"verdict":"admit"`, `"namespace":"restart"`); len(lines) == 0 {
		t.Errorf("the create after the restart was not decided by pullguard")
	}
}
