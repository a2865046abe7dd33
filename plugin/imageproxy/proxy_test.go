package imageproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestUnaryPassThrough(t *testing.T) {
	h := newHarness(t, nil, 50)
	rt := runtimeapi.NewRuntimeServiceClient(dialTest(t, h.sock))
	ctx := t.Context()

	v, err := rt.Version(ctx, &runtimeapi.VersionRequest{Version: "0.1.0"})
	if err != nil {
		t.Fatalf("Version: %v", err)
	}
	if v.RuntimeName != "test-upstream" || v.RuntimeApiVersion != "v1" {
		t.Errorf("Version = %+v, want the upstream's answer", v)
	}
	lc, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		t.Fatalf("ListContainers: %v", err)
	}
	if len(lc.Containers) != 50 || !proto.Equal(lc.Containers[49], h.upstream.containers[49]) {
		t.Errorf("ListContainers returned %d containers, want the upstream's 50 unchanged", len(lc.Containers))
	}
}

func TestStatusCodeAndMessagePreserved(t *testing.T) {
	h := newHarness(t, nil, 0)
	rt := runtimeapi.NewRuntimeServiceClient(dialTest(t, h.sock))
	_, err := rt.RemoveContainer(t.Context(), &runtimeapi.RemoveContainerRequest{ContainerId: missingID})
	st := status.Convert(err)
	want := `an error occurred when try to find container "missing": not found`
	if st.Code() != codes.NotFound || st.Message() != want {
		t.Errorf("got %v %q, want NotFound %q", st.Code(), st.Message(), want)
	}
}

func TestMetadataAndDeadlinePropagate(t *testing.T) {
	h := newHarness(t, nil, 0)
	rt := runtimeapi.NewRuntimeServiceClient(dialTest(t, h.sock))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "x-test", "abc", "x-bin-bin", string([]byte{0, 1, 2}))

	var header, trailer metadata.MD
	if _, err := rt.Version(ctx, &runtimeapi.VersionRequest{}, grpc.Header(&header), grpc.Trailer(&trailer)); err != nil {
		t.Fatalf("Version: %v", err)
	}
	if got := header.Get("x-echo-header"); len(got) != 1 || got[0] != "abc" {
		t.Errorf("upstream header x-echo-header = %q, want [abc]", got)
	}
	if got := trailer.Get("x-echo-trailer"); len(got) != 1 || got[0] != "abc" {
		t.Errorf("upstream trailer x-echo-trailer = %q, want [abc]", got)
	}

	h.upstream.mu.Lock()
	md, hadDeadline, deadline := h.upstream.lastMD, h.upstream.hadDeadln, h.upstream.deadline
	h.upstream.mu.Unlock()
	if got := md.Get("x-bin-bin"); len(got) != 1 || got[0] != string([]byte{0, 1, 2}) {
		t.Errorf("upstream saw x-bin-bin = %q, want the client's binary value", got)
	}
	if got := md.Get("x-test"); len(got) != 1 || got[0] != "abc" {
		t.Errorf("upstream saw x-test = %q, want [abc]", got)
	}
	clientDeadline, _ := ctx.Deadline()
	// Deadlines travel as relative timeouts, so allow for transit time.
	if !hadDeadline || deadline.After(clientDeadline.Add(time.Second)) {
		t.Errorf("upstream deadline = %v (set %v), want about the client's %v", deadline, hadDeadline, clientDeadline)
	}
}

func TestCancellationPropagates(t *testing.T) {
	h := newHarness(t, nil, 0)
	rt := runtimeapi.NewRuntimeServiceClient(dialTest(t, h.sock))
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := rt.Status(ctx, &runtimeapi.StatusRequest{})
		errc <- err
	}()
	waitFor(t, h.upstream.statusEntered, "upstream Status entered")
	cancel()
	if err := <-errc; status.Code(err) != codes.Canceled {
		t.Errorf("client got %v, want Canceled", err)
	}
	if err := waitFor(t, h.upstream.statusCtxErr, "upstream saw cancellation"); !errors.Is(err, context.Canceled) {
		t.Errorf("upstream context ended with %v, want context.Canceled", err)
	}
}

func TestMessageSizeLimits(t *testing.T) {
	h := newHarness(t, nil, 0)
	rt := runtimeapi.NewRuntimeServiceClient(dialTest(t, h.sock))
	ctx := t.Context()

	big := strings.Repeat("x", 15<<20)
	resp, err := rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: "c", Cmd: []string{big}})
	if err != nil {
		t.Fatalf("15 MiB ExecSync: %v", err)
	}
	if len(resp.Stdout) != len(big) || string(resp.Stdout) != big {
		t.Errorf("15 MiB round trip returned %d bytes, want %d identical", len(resp.Stdout), len(big))
	}

	tooBig := strings.Repeat("x", 17<<20)
	_, err = rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: "c", Cmd: []string{tooBig}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("17 MiB request: got %v, want ResourceExhausted", err)
	}
	// Responses pass as frames: the limit that applies is the client's own,
	// as it would be straight to containerd.
	resp, err = rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: "c", Cmd: []string{hugeCmd}})
	if err != nil || len(resp.Stdout) != 17<<20 {
		t.Errorf("17 MiB response to a client accepting 64 MiB: %d bytes, %v", len(resp.GetStdout()), err)
	}
	kubeletLike, err := grpc.NewClient("unix://"+h.sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(DefaultMaxMessageBytes)))
	if err != nil {
		t.Fatal(err)
	}
	defer kubeletLike.Close()
	_, err = runtimeapi.NewRuntimeServiceClient(kubeletLike).ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: "c", Cmd: []string{hugeCmd}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("17 MiB response to a 16 MiB client: got %v, want ResourceExhausted", err)
	}
}

func TestUnknownMethodForwardedRaw(t *testing.T) {
	h := newHarness(t, nil, 0)
	conn := dialTest(t, h.sock)
	codec, err := newRawCodec()
	if err != nil {
		t.Fatal(err)
	}
	// Not a valid protobuf message: only a byte-exact relay gets it through.
	payload := []byte{0xff, 0xff, 0xff, 0x01, 'f', 'u', 't', 'u', 'r', 'e'}
	want := bytes.Clone(payload)
	for i, j := 0, len(want)-1; i < j; i, j = i+1, j-1 {
		want[i], want[j] = want[j], want[i]
	}

	t.Run("unary", func(t *testing.T) {
		var resp frame
		defer resp.free()
		var header, trailer metadata.MD
		err := conn.Invoke(t.Context(), futureUnary, rawFrame(payload), &resp,
			grpc.ForceCodecV2(codec), grpc.Header(&header), grpc.Trailer(&trailer))
		if err != nil {
			t.Fatalf("invoke %s: %v", futureUnary, err)
		}
		if !bytes.Equal(resp.bytes(), want) {
			t.Errorf("response %x, want %x", resp.bytes(), want)
		}
		if header.Get("x-future")[0] != "header" || trailer.Get("x-future-trailer")[0] != "trailer" {
			t.Errorf("header %v trailer %v, want the upstream's", header, trailer)
		}
	})

	t.Run("bidi stream", func(t *testing.T) {
		cs, err := conn.NewStream(t.Context(), &anyStream, futureStream, grpc.ForceCodecV2(codec))
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if err := cs.SendMsg(rawFrame(payload)); err != nil {
				t.Fatalf("send: %v", err)
			}
			var resp frame
			if err := cs.RecvMsg(&resp); err != nil {
				t.Fatalf("recv: %v", err)
			}
			if !bytes.Equal(resp.bytes(), want) {
				t.Errorf("echo %x, want %x", resp.bytes(), want)
			}
			resp.free()
		}
		if err := cs.CloseSend(); err != nil {
			t.Fatal(err)
		}
		var resp frame
		if err := cs.RecvMsg(&resp); !errors.Is(err, io.EOF) {
			t.Errorf("after CloseSend got %v, want io.EOF (upstream ended cleanly)", err)
		}
		if got := cs.Trailer().Get("x-future-trailer"); len(got) != 1 {
			t.Errorf("trailer %v, want the upstream's", cs.Trailer())
		}
	})

	t.Run("unknown to upstream too", func(t *testing.T) {
		var resp frame
		err := conn.Invoke(t.Context(), "/runtime.v1.RuntimeService/NoSuchMethod", rawFrame(payload), &resp, grpc.ForceCodecV2(codec))
		if st := status.Convert(err); st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), "NoSuchMethod") {
			t.Errorf("got %v, want the upstream's Unimplemented", err)
		}
	})
}

func rawFrame(b []byte) *frame {
	return &frame{data: mem.BufferSlice{mem.SliceBuffer(b)}}
}

func TestServerStreamingEvents(t *testing.T) {
	h := newHarness(t, nil, 0)
	rt := runtimeapi.NewRuntimeServiceClient(dialTest(t, h.sock))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stream, err := rt.GetContainerEvents(ctx, &runtimeapi.GetEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	header, err := stream.Header()
	if err != nil || header.Get("x-events")[0] != "yes" {
		t.Errorf("stream header %v, %v; want the upstream's", header, err)
	}
	for i := range 3 {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if want := "c" + string(rune('0'+i)); ev.ContainerId != want || ev.ContainerEventType != runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT {
			t.Errorf("event %d = %v, want container %s started", i, ev, want)
		}
	}
	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("after cancel got %v, want Canceled", err)
	}
}

func TestUpstreamDownThenBack(t *testing.T) {
	h := newHarness(t, nil, 0)
	rt := runtimeapi.NewRuntimeServiceClient(dialTest(t, h.sock))
	if _, err := rt.Version(t.Context(), &runtimeapi.VersionRequest{}); err != nil {
		t.Fatalf("Version before outage: %v", err)
	}
	if err := h.proxy.UpstreamReady(t.Context()); err != nil {
		t.Fatalf("UpstreamReady before outage: %v", err)
	}

	h.upstream.stop()
	// A long deadline: failing fast means Unavailable, not DeadlineExceeded.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for range 3 {
		_, err := rt.Version(ctx, &runtimeapi.VersionRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("upstream down: got %v, want Unavailable", err)
		}
	}
	// The connection that was open breaks (EOF); the next ones are told why.
	eventually(t, 15*time.Second, "a call names the unreachable containerd", func() error {
		_, err := rt.Version(ctx, &runtimeapi.VersionRequest{})
		if msg := status.Convert(err).Message(); status.Code(err) != codes.Unavailable ||
			!strings.Contains(msg, "containerd at "+h.upstream.path+" is unavailable") {
			return fmt.Errorf("got %v", err)
		}
		return nil
	})
	if err := h.proxy.UpstreamReady(ctx); err == nil {
		t.Error("UpstreamReady = nil with the upstream down")
	}

	h.upstream.start(t)
	eventually(t, 15*time.Second, "Version after upstream restart", func() error {
		_, err := rt.Version(t.Context(), &runtimeapi.VersionRequest{})
		return err
	})
	// The proxy's own connection (readiness, pinned pulls) redials with a
	// backoff capped at upstreamMaxBackoff.
	eventually(t, 15*time.Second, "UpstreamReady after restart", func() error {
		return h.proxy.UpstreamReady(t.Context())
	})
}

func TestShutdownDrainsInFlightCall(t *testing.T) {
	h := newHarness(t, nil, 0)
	rt := runtimeapi.NewRuntimeServiceClient(dialTest(t, h.sock))
	callErr := make(chan error, 1)
	go func() {
		_, err := rt.Status(t.Context(), &runtimeapi.StatusRequest{})
		callErr <- err
	}()
	waitFor(t, h.upstream.statusEntered, "upstream Status entered")

	shutErr := make(chan error, 1)
	go func() { shutErr <- h.stopProxy(t, 30*time.Second) }()
	// Shutdown stops accepting first: the socket file disappears while the
	// call is still in flight.
	eventually(t, 10*time.Second, "socket removed", func() error {
		if _, err := os.Lstat(h.sock); !errors.Is(err, os.ErrNotExist) {
			return errors.New("socket still present")
		}
		return nil
	})
	select {
	case err := <-shutErr:
		t.Fatalf("Shutdown returned (%v) before the in-flight call finished", err)
	default:
	}

	close(h.upstream.statusRelease)
	if err := <-callErr; err != nil {
		t.Errorf("in-flight call during Shutdown: %v, want success", err)
	}
	if err := <-shutErr; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func TestShutdownForcesAfterDeadline(t *testing.T) {
	h := newHarness(t, nil, 0)
	rt := runtimeapi.NewRuntimeServiceClient(dialTest(t, h.sock))
	callErr := make(chan error, 1)
	go func() {
		_, err := rt.Status(t.Context(), &runtimeapi.StatusRequest{})
		callErr <- err
	}()
	waitFor(t, h.upstream.statusEntered, "upstream Status entered")

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := h.proxy.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown with expired context: %v, want context.Canceled", err)
	}
	<-h.serveErr
	h.shutdown.Do(func() {}) // already shut down; keep Cleanup from doing it again
	if err := <-callErr; err == nil {
		t.Error("in-flight call succeeded after a forced shutdown")
	}
	if err := waitFor(t, h.upstream.statusCtxErr, "upstream saw cancellation"); err == nil {
		t.Error("upstream call was not cancelled")
	}
}

// recordingGate is a Gate for tests: it records what it was asked and answers
// with what the test configured.
type recordingGate struct {
	mu        sync.Mutex
	pulls     []*runtimeapi.PullImageRequest
	creates   []*runtimeapi.CreateContainerRequest
	plan      *PullPlan
	pullErr   error
	createErr error
}

func (g *recordingGate) AdmitPull(_ context.Context, req *runtimeapi.PullImageRequest) (*PullPlan, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pulls = append(g.pulls, req)
	return g.plan, g.pullErr
}

func (g *recordingGate) AdmitCreate(_ context.Context, req *runtimeapi.CreateContainerRequest) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.creates = append(g.creates, req)
	return g.createErr
}

func pullRequest(image string) *runtimeapi.PullImageRequest {
	return &runtimeapi.PullImageRequest{
		Image: &runtimeapi.ImageSpec{Image: image, UserSpecifiedImage: image},
		Auth:  &runtimeapi.AuthConfig{Username: "user", Password: "secret", ServerAddress: "registry.example"},
		SandboxConfig: &runtimeapi.PodSandboxConfig{
			Metadata: &runtimeapi.PodSandboxMetadata{Name: "pod", Namespace: "team-a", Uid: "uid-1"},
		},
	}
}

func TestGatePullImage(t *testing.T) {
	denial := status.Error(codes.Unknown, "SignatureValidationFailed: image registry.example/app:v1 denied in namespace team-a by policy p rule r: no signature")
	pinned := "registry.example/app@sha256:" + strings.Repeat("d", 64)
	tests := []struct {
		name        string
		plan        *PullPlan
		err         error
		wantErr     error
		wantForward string // image upstream receives; "" = no pull upstream
	}{
		{name: "admitted unchanged (nil plan)", wantForward: "registry.example/app:v1"},
		{name: "admitted unchanged (empty plan)", plan: &PullPlan{}, wantForward: "registry.example/app:v1"},
		{name: "denied", err: denial, wantErr: denial},
		{name: "plain error becomes Unknown", err: errors.New("boom"), wantErr: status.Error(codes.Unknown, "boom")},
		{
			name:        "rewritten",
			plan:        &PullPlan{Forward: &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: pinned}}},
			wantForward: pinned,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			gate := &recordingGate{plan: tc.plan, pullErr: tc.err}
			h := newHarness(t, gate, 0)
			img := runtimeapi.NewImageServiceClient(dialTest(t, h.sock))
			req := pullRequest("registry.example/app:v1")
			resp, err := img.PullImage(t.Context(), req)

			if len(gate.pulls) != 1 || !proto.Equal(gate.pulls[0], req) {
				t.Fatalf("gate saw %v, want exactly the client's request decoded", gate.pulls)
			}
			pulls := h.upstream.recordedPulls()
			if tc.wantErr != nil {
				want := status.Convert(tc.wantErr)
				if got := status.Convert(err); got.Code() != want.Code() || got.Message() != want.Message() {
					t.Errorf("got %v %q, want %v %q", got.Code(), got.Message(), want.Code(), want.Message())
				}
				if len(pulls) != 0 {
					t.Errorf("denied pull reached upstream: %v", pulls)
				}
				return
			}
			if err != nil {
				t.Fatalf("PullImage: %v", err)
			}
			if resp.ImageRef != "sha256:"+strings.Repeat("b", 64) {
				t.Errorf("ImageRef = %q, want the upstream's", resp.ImageRef)
			}
			if len(pulls) != 1 || pulls[0].Image.Image != tc.wantForward {
				t.Fatalf("upstream received %v, want one pull of %s", pulls, tc.wantForward)
			}
			if tc.plan == nil || tc.plan.Forward == nil {
				if !proto.Equal(pulls[0], req) {
					t.Errorf("upstream received %v, want the original request", pulls[0])
				}
			}
		})
	}
}

func TestGateCreateContainer(t *testing.T) {
	req := &runtimeapi.CreateContainerRequest{
		PodSandboxId: "sb-1",
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
			Image:    &runtimeapi.ImageSpec{Image: "sha256:" + strings.Repeat("e", 64), UserSpecifiedImage: "registry.example/app:v1"},
		},
		SandboxConfig: &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "pod", Namespace: "strict"}},
	}
	t.Run("admitted", func(t *testing.T) {
		gate := &recordingGate{}
		h := newHarness(t, gate, 0)
		rt := runtimeapi.NewRuntimeServiceClient(dialTest(t, h.sock))
		resp, err := rt.CreateContainer(t.Context(), req)
		if err != nil || resp.ContainerId != "created-1" {
			t.Fatalf("CreateContainer = %v, %v; want the upstream's answer", resp, err)
		}
		if len(gate.creates) != 1 || !proto.Equal(gate.creates[0], req) {
			t.Errorf("gate saw %v, want the request decoded", gate.creates)
		}
		if c := h.upstream.recordedCreates(); len(c) != 1 || !proto.Equal(c[0], req) {
			t.Errorf("upstream received %v, want the original request", c)
		}
	})
	t.Run("denied", func(t *testing.T) {
		denial := status.Error(codes.Unknown, "SignatureValidationFailed: image registry.example/app:v1 denied in namespace strict")
		gate := &recordingGate{createErr: denial}
		h := newHarness(t, gate, 0)
		rt := runtimeapi.NewRuntimeServiceClient(dialTest(t, h.sock))
		_, err := rt.CreateContainer(t.Context(), req)
		if st := status.Convert(err); st.Code() != codes.Unknown || st.Message() != status.Convert(denial).Message() {
			t.Errorf("got %v, want the gate's denial unchanged", err)
		}
		if c := h.upstream.recordedCreates(); len(c) != 0 {
			t.Errorf("denied create reached upstream: %v", c)
		}
	})
}

func TestGateUndecodableRequestDenied(t *testing.T) {
	gate := &recordingGate{}
	h := newHarness(t, gate, 0)
	conn := dialTest(t, h.sock)
	codec, err := newRawCodec()
	if err != nil {
		t.Fatal(err)
	}
	for _, method := range []string{methodPullImage, methodCreateContainer} {
		var resp frame
		err := conn.Invoke(t.Context(), method, rawFrame([]byte{0xff, 0xff, 0xff}), &resp, grpc.ForceCodecV2(codec))
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s with garbage: got %v, want InvalidArgument", method, err)
		}
	}
	if len(gate.pulls)+len(gate.creates) != 0 || len(h.upstream.recordedPulls())+len(h.upstream.recordedCreates()) != 0 {
		t.Error("an undecodable request reached the gate or the upstream")
	}
}

func TestSetGateSwitchesEnforcement(t *testing.T) {
	h := newHarness(t, nil, 0)
	img := runtimeapi.NewImageServiceClient(dialTest(t, h.sock))
	if _, err := img.PullImage(t.Context(), pullRequest("a:1")); err != nil {
		t.Fatalf("pull with no gate: %v", err)
	}
	h.proxy.SetGate(&recordingGate{pullErr: status.Error(codes.Unknown, "SignatureValidationFailed: no")})
	if _, err := img.PullImage(t.Context(), pullRequest("a:1")); status.Code(err) != codes.Unknown {
		t.Errorf("pull after SetGate(deny): %v, want the denial", err)
	}
	h.proxy.SetGate(nil)
	if _, err := img.PullImage(t.Context(), pullRequest("a:1")); err != nil {
		t.Errorf("pull after SetGate(nil): %v", err)
	}
	if n := len(h.upstream.recordedPulls()); n != 2 {
		t.Errorf("upstream saw %d pulls, want 2", n)
	}
}

// waitFor receives one value from ch or fails the test after a generous
// deadline.
func waitFor[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for: %s", what)
		var zero T
		return zero
	}
}
