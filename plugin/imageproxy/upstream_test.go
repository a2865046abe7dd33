package imageproxy

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

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/distribution/reference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
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
	images    map[string]*imagesapi.Image // containerd's image store, by name
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
		images:        make(map[string]*imagesapi.Image),
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
	imagesapi.RegisterImagesServer(srv, &testImages{u: u})
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

// testImageID is the image ID (config digest) every test pull yields.
var testImageID = "sha256:" + strings.Repeat("b", 64)

// PullImage records the request and, like containerd's CRI, stores the image
// under its ID and under the name pulled (with its digest as target when the
// name carries one), labelled as CRI-managed.
func (u *testUpstream) PullImage(_ context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	name := normalizeTestRef(req.GetImage().GetImage())
	if strings.Contains(name, "fail-pull") {
		return nil, status.Errorf(codes.NotFound, "failed to pull and unpack image %q: not found", name)
	}
	target := &types.Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: "sha256:" + strings.Repeat("c", 64), Size: 500}
	if _, dgst, ok := strings.Cut(name, "@"); ok {
		target.Digest = dgst
	}
	labels := map[string]string{criImageLabel: criImageLabelValue}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.pulls = append(u.pulls, req)
	u.images[testImageID] = &imagesapi.Image{Name: testImageID, Target: target, Labels: labels}
	u.images[name] = &imagesapi.Image{Name: name, Target: target, Labels: labels}
	return &runtimeapi.PullImageResponse{ImageRef: testImageID}, nil
}

// ImageStatus answers from the image store like containerd's CRI: an empty
// response for an unknown name.
func (u *testUpstream) ImageStatus(_ context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	name := normalizeTestRef(req.GetImage().GetImage())
	u.mu.Lock()
	img, ok := u.images[name]
	u.mu.Unlock()
	if !ok || img.Labels[criImageLabel] != criImageLabelValue {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	return &runtimeapi.ImageStatusResponse{Image: &runtimeapi.Image{Id: testImageID, RepoTags: []string{name}, Size: 12345}}, nil
}

// normalizeTestRef names images the way containerd's CRI does
// (docker.io/library/app:latest for app); unparsable names stay as they are.
func normalizeTestRef(ref string) string {
	if strings.HasPrefix(ref, "sha256:") {
		return ref
	}
	n, err := reference.ParseDockerRef(ref)
	if err != nil {
		return ref
	}
	return n.String()
}

func (u *testUpstream) image(name string) (*imagesapi.Image, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	img, ok := u.images[name]
	return img, ok
}

// testImages is the part of containerd's native images API the proxy uses,
// over the test upstream's image store. It insists on the namespace header.
type testImages struct {
	imagesapi.UnimplementedImagesServer
	u *testUpstream
}

func checkNamespace(ctx context.Context) error {
	if ns := metadata.ValueFromIncomingContext(ctx, namespaceHeader); len(ns) != 1 || ns[0] != DefaultUpstreamNamespace {
		return status.Errorf(codes.FailedPrecondition, "namespace header = %v, want [%s]", ns, DefaultUpstreamNamespace)
	}
	return nil
}

func (t *testImages) Get(ctx context.Context, req *imagesapi.GetImageRequest) (*imagesapi.GetImageResponse, error) {
	if err := checkNamespace(ctx); err != nil {
		return nil, err
	}
	img, ok := t.u.image(req.Name)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "image %q: not found", req.Name)
	}
	return &imagesapi.GetImageResponse{Image: img}, nil
}

func (t *testImages) Create(ctx context.Context, req *imagesapi.CreateImageRequest) (*imagesapi.CreateImageResponse, error) {
	if err := checkNamespace(ctx); err != nil {
		return nil, err
	}
	t.u.mu.Lock()
	defer t.u.mu.Unlock()
	if _, ok := t.u.images[req.Image.Name]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "image %q: already exists", req.Image.Name)
	}
	t.u.images[req.Image.Name] = req.Image
	return &imagesapi.CreateImageResponse{Image: req.Image}, nil
}

// Update honours only the mask paths the proxy may send.
func (t *testImages) Update(ctx context.Context, req *imagesapi.UpdateImageRequest) (*imagesapi.UpdateImageResponse, error) {
	if err := checkNamespace(ctx); err != nil {
		return nil, err
	}
	t.u.mu.Lock()
	defer t.u.mu.Unlock()
	old, ok := t.u.images[req.Image.Name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "image %q: not found", req.Image.Name)
	}
	updated := proto.Clone(old).(*imagesapi.Image)
	for _, p := range req.GetUpdateMask().GetPaths() {
		switch {
		case p == "target":
			updated.Target = req.Image.Target
		case strings.HasPrefix(p, "labels."):
			key := strings.TrimPrefix(p, "labels.")
			if updated.Labels == nil {
				updated.Labels = map[string]string{}
			}
			updated.Labels[key] = req.Image.Labels[key]
		default:
			return nil, status.Errorf(codes.InvalidArgument, "unexpected update path %q", p)
		}
	}
	t.u.images[req.Image.Name] = updated
	return &imagesapi.UpdateImageResponse{Image: updated}, nil
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
