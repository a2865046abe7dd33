package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
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
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// testUpstream is a real in-process gRPC server implementing the parts of the
// CRI RuntimeService and ImageService these tests need, on a unix socket. It
// stands in for containerd only in unit tests; integration/ runs the real one.
type testUpstream struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer

	path       string
	containers []*runtimeapi.Container

	// Status blocks until release is closed, to hold a call in flight.
	statusEntered chan struct{}
	statusRelease chan struct{}
	statusCtxErr  chan error

	mu        sync.Mutex
	srv       *grpc.Server
	pulls     []*runtimeapi.PullImageRequest
	creates   []*runtimeapi.CreateContainerRequest
	lastMD    metadata.MD
	deadline  time.Time
	hadDeadln bool
}

const (
	futureUnary  = "/runtime.v1.RuntimeService/SomeFutureMethod"
	futureStream = "/runtime.v1.RuntimeService/SomeFutureStream"
	missingID    = "missing"
	hugeCmd      = "huge"
)

func newTestUpstream(t testing.TB, dir string, containers int) *testUpstream {
	t.Helper()
	u := &testUpstream{
		path:          filepath.Join(dir, "upstream.sock"),
		statusEntered: make(chan struct{}, 16),
		statusRelease: make(chan struct{}),
		statusCtxErr:  make(chan error, 16),
	}
	for i := range containers {
		u.containers = append(u.containers, &runtimeapi.Container{
			Id:           fmt.Sprintf("%064d", i),
			PodSandboxId: fmt.Sprintf("sandbox-%d", i),
			Metadata:     &runtimeapi.ContainerMetadata{Name: fmt.Sprintf("c%d", i)},
			Image:        &runtimeapi.ImageSpec{Image: "registry.example/app:v1"},
			ImageRef:     "sha256:" + strings.Repeat("a", 64),
			State:        runtimeapi.ContainerState_CONTAINER_RUNNING,
			CreatedAt:    int64(i),
			Labels:       map[string]string{"io.kubernetes.pod.namespace": "default", "io.kubernetes.pod.name": fmt.Sprintf("pod-%d", i)},
		})
	}
	u.start(t)
	return u
}

func (u *testUpstream) start(t testing.TB) {
	t.Helper()
	l, err := net.Listen("unix", u.path)
	if err != nil {
		t.Fatalf("test upstream listen: %v", err)
	}
	codec, err := newRawCodec()
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.ForceServerCodecV2(codec), // real messages fall back to proto
		grpc.UnknownServiceHandler(u.future),
		grpc.MaxRecvMsgSize(DefaultMaxMessageBytes),
	)
	runtimeapi.RegisterRuntimeServiceServer(srv, u)
	runtimeapi.RegisterImageServiceServer(srv, u)
	u.mu.Lock()
	u.srv = srv
	u.mu.Unlock()
	go func() { _ = srv.Serve(l) }()
}

// stop kills the upstream like a containerd crash: connections drop, the
// socket goes away.
func (u *testUpstream) stop() {
	u.mu.Lock()
	srv := u.srv
	u.mu.Unlock()
	srv.Stop()
}

func (u *testUpstream) record(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	dl, ok := ctx.Deadline()
	u.mu.Lock()
	defer u.mu.Unlock()
	u.lastMD = md
	u.deadline, u.hadDeadln = dl, ok
}

func (u *testUpstream) Version(ctx context.Context, _ *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	u.record(ctx)
	if v := metadata.ValueFromIncomingContext(ctx, "x-test"); len(v) > 0 {
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-echo-header", v[0]))
		_ = grpc.SetTrailer(ctx, metadata.Pairs("x-echo-trailer", v[0]))
	}
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "test-upstream", RuntimeVersion: "1.0", RuntimeApiVersion: "v1"}, nil
}

func (u *testUpstream) ListContainers(context.Context, *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	return &runtimeapi.ListContainersResponse{Containers: u.containers}, nil
}

func (u *testUpstream) RemoveContainer(_ context.Context, req *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	if req.ContainerId == missingID {
		return nil, status.Errorf(codes.NotFound, "an error occurred when try to find container %q: not found", req.ContainerId)
	}
	return &runtimeapi.RemoveContainerResponse{}, nil
}

// ExecSync echoes its first argument as stdout; "huge" asks for a response
// larger than the proxy may carry.
func (u *testUpstream) ExecSync(_ context.Context, req *runtimeapi.ExecSyncRequest) (*runtimeapi.ExecSyncResponse, error) {
	if len(req.Cmd) == 0 {
		return nil, status.Error(codes.InvalidArgument, "no command")
	}
	if req.Cmd[0] == hugeCmd {
		return &runtimeapi.ExecSyncResponse{Stdout: make([]byte, 17<<20)}, nil
	}
	return &runtimeapi.ExecSyncResponse{Stdout: []byte(req.Cmd[0])}, nil
}

func (u *testUpstream) Status(ctx context.Context, _ *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	u.statusEntered <- struct{}{}
	select {
	case <-u.statusRelease:
		return &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{}}, nil
	case <-ctx.Done():
		u.statusCtxErr <- ctx.Err()
		return nil, ctx.Err()
	}
}

func (u *testUpstream) GetContainerEvents(_ *runtimeapi.GetEventsRequest, stream runtimeapi.RuntimeService_GetContainerEventsServer) error {
	if err := stream.SendHeader(metadata.Pairs("x-events", "yes")); err != nil {
		return err
	}
	for i := range 3 {
		ev := &runtimeapi.ContainerEventResponse{
			ContainerId:        fmt.Sprintf("c%d", i),
			ContainerEventType: runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT,
			CreatedAt:          int64(i),
		}
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return stream.Context().Err()
}

func (u *testUpstream) CreateContainer(_ context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	u.mu.Lock()
	u.creates = append(u.creates, req)
	u.mu.Unlock()
	return &runtimeapi.CreateContainerResponse{ContainerId: "created-1"}, nil
}

func (u *testUpstream) PullImage(_ context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	u.mu.Lock()
	u.pulls = append(u.pulls, req)
	u.mu.Unlock()
	return &runtimeapi.PullImageResponse{ImageRef: "sha256:" + strings.Repeat("b", 64)}, nil
}

func (u *testUpstream) ImageStatus(_ context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	return &runtimeapi.ImageStatusResponse{Image: &runtimeapi.Image{
		Id:          "sha256:" + strings.Repeat("b", 64),
		RepoTags:    []string{req.GetImage().GetImage()},
		RepoDigests: []string{"registry.example/app@sha256:" + strings.Repeat("c", 64)},
		Size:        12345,
	}}, nil
}

func (u *testUpstream) recordedPulls() []*runtimeapi.PullImageRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.pulls)
}

func (u *testUpstream) recordedCreates() []*runtimeapi.CreateContainerRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.creates)
}

// future implements methods the compiled cri-api does not know: it echoes
// every raw message back with its bytes reversed, and announces itself in a
// header and a trailer.
func (u *testUpstream) future(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	if method != futureUnary && method != futureStream {
		return status.Errorf(codes.Unimplemented, "unknown method %s", method)
	}
	if err := ss.SendHeader(metadata.Pairs("x-future", "header")); err != nil {
		return err
	}
	ss.SetTrailer(metadata.Pairs("x-future-trailer", "trailer"))
	for {
		var f frame
		err := ss.RecvMsg(&f)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		b := slices.Clone(f.bytes())
		f.free()
		slices.Reverse(b)
		if err := ss.SendMsg(&frame{data: mem.BufferSlice{mem.SliceBuffer(b)}}); err != nil {
			return err
		}
	}
}

// dialTest connects a CRI client to a unix socket the way kubelet does, but
// with generous limits so that the server's limits are what is tested.
func dialTest(t testing.TB, path string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)),
	)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// shortTempDir keeps socket paths under the 108-byte unix limit, which
// t.TempDir's long names can exceed.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// eventually retries f until it succeeds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, timeout, err)
		}
		<-time.After(20 * time.Millisecond) // poll interval, not synchronisation
	}
}

// harness runs a test upstream and a proxy in front of it.
type harness struct {
	dir      string
	upstream *testUpstream
	proxy    *Server
	sock     string
	serveErr chan error
	shutdown sync.Once
}

func newHarness(t testing.TB, gate Gate, containers int) *harness {
	t.Helper()
	dir := shortTempDir(t)
	h := &harness{dir: dir, upstream: newTestUpstream(t, dir, containers), sock: filepath.Join(dir, "run", "pullguard.sock")}
	p, err := New(Options{Upstream: "unix://" + h.upstream.path, Gate: gate})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.proxy = p
	l, err := Listen(h.sock, 0, "")
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	h.serveErr = make(chan error, 1)
	go func() { h.serveErr <- p.Serve(l) }()
	t.Cleanup(func() {
		h.stopProxy(t, time.Second)
		h.upstream.stop()
	})
	return h
}

func (h *harness) stopProxy(t testing.TB, grace time.Duration) error {
	var err error
	h.shutdown.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		err = h.proxy.Shutdown(ctx)
		if serr := <-h.serveErr; serr != nil {
			t.Errorf("Serve returned %v after Shutdown", serr)
		}
	})
	return err
}
