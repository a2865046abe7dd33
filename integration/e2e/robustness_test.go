package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullguard/pullguard/integration/testbed"
)

// TestMalformedAndOversizeInputs sends what a buggy or hostile client could: every request gets
// an error a human can read, and pullguard keeps answering afterwards.
func TestMalformedAndOversizeInputs(t *testing.T) {
	t.Parallel()
	b := sharedBed(t)
	ctx := testCtx(t)
	pg := startPullguard(t, b, testbed.PullguardOptions{
		Config: inlineTOML("cluster", "", rule{name: b.Registry.Host + "/*"}) + inlineTOML("ns", "team-h", rule{name: b.Registry.Host + "/*"}),
	})
	// A client allowed to send more than the 16 MiB kubelet sends, so the server's own limit is
	// what is tested.
	conn, err := grpc.NewClient("unix://"+pg.Socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20), grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	images := runtimeapi.NewImageServiceClient(conn)
	sandbox := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "h", Namespace: "team-h", Uid: "h"}}

	alive := func(when string) {
		t.Helper()
		if exited, err := pg.Process().Exited(); exited {
			t.Fatalf("pullguard exited %s: %v\n%s", when, err, lastBytes(pg.Logs(), 4000))
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := images.ImageFsInfo(cctx, &runtimeapi.ImageFsInfoRequest{}); err != nil {
			t.Fatalf("pullguard stopped answering %s: %v", when, err)
		}
	}

	malformed := []struct{ name, image string }{
		{"empty", ""},
		{"only colons", ":::"},
		{"uppercase repository", b.Registry.Host + "/Team-H/App:v1"},
		{"bad digest", b.Registry.Host + "/team-h/app@sha256:1234"},
		{"bad tag chars", b.Registry.Host + "/team-h/app:v1!"},
		{"space", b.Registry.Host + "/team-h/app v1"},
		{"port out of range", "127.0.0.1:99999999/team-h/app:v1"},
		{"control characters", "team-h/app\x00\n:v1"},
		{"long name 64KiB", b.Registry.Host + "/" + strings.Repeat("a", 64<<10) + ":v1"},
		{"long tag", b.Registry.Host + "/team-h/app:" + strings.Repeat("t", 1000)},
		{"unicode", b.Registry.Host + "/team-h/äpp:v1"},
	}
	for _, tc := range malformed {
		for _, withSandbox := range []bool{true, false} {
			req := &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: tc.image}}
			if withSandbox {
				req.SandboxConfig = sandbox
			}
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, err := images.PullImage(cctx, req)
			cancel()
			st := status.Convert(err)
			switch {
			case err == nil:
				t.Errorf("%s (sandbox %t): pull of %.80q succeeded", tc.name, withSandbox, tc.image)
			case st.Code() != codes.Unknown && st.Code() != codes.InvalidArgument:
				t.Errorf("%s (sandbox %t): code %s, want Unknown (a denial) or InvalidArgument: %.300s", tc.name, withSandbox, st.Code(), st.Message())
			case strings.TrimSpace(st.Message()) == "":
				t.Errorf("%s (sandbox %t): error with no message", tc.name, withSandbox)
			case strings.Contains(st.Message(), "panic"):
				t.Errorf("%s (sandbox %t): message mentions a panic: %.300s", tc.name, withSandbox, st.Message())
			}
		}
		alive("after a malformed name (" + tc.name + ")")
	}

	// Bigger than the 16 MiB kubelet's side allows: refused with ResourceExhausted, no crash.
	huge := strings.Repeat("x", 17<<20)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = images.PullImage(cctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: huge}, SandboxConfig: sandbox})
	cancel()
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("17 MiB PullImage: got code %s (%.200v), want ResourceExhausted", status.Code(err), err)
	}
	alive("after a 17 MiB request")

	// Large but allowed metadata in the sandbox config must not break the namespace lookup.
	bigLabels := map[string]string{"io.kubernetes.pod.namespace": "team-h"}
	for i := 0; i < 2000; i++ {
		bigLabels[fmt.Sprintf("example.com/label-%04d", i)] = strings.Repeat("v", 1000)
	}
	cctx, cancel = context.WithTimeout(ctx, 30*time.Second)
	_, err = images.PullImage(cctx, &runtimeapi.PullImageRequest{
		Image:         &runtimeapi.ImageSpec{Image: "other.example/not-admitted:v1"},
		SandboxConfig: &runtimeapi.PodSandboxConfig{Labels: bigLabels, Annotations: bigLabels},
	})
	cancel()
	if err == nil || !strings.HasPrefix(status.Convert(err).Message(), denialPrefix) {
		t.Errorf("pull with ~4 MiB of labels: got %v, want a %q denial", err, denialPrefix)
	}
	alive("after a large sandbox config")

	// crictl shows a readable error for a malformed name too.
	if r := pg.Crictl.Run(ctx, "pull", "--pod-config", podConfig(t, b, "hh", "team-h"), "UPPER/Case::bad"); r.Err == nil || strings.TrimSpace(r.Stderr) == "" {
		t.Errorf("crictl pull of a malformed name: want a failure with a message: %v", r)
	}
	alive("after crictl's malformed pull")
}
