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
	"strconv"
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
	"google.golang.org/protobuf/reflect/protoreflect"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// testUpstream is a real in-process gRPC server standing in for containerd on
// a unix socket: the CRI ImageService, the native images API the tagging
// uses, and a RuntimeService that answers (so that a runtime call the proxy
// wrongly relayed would succeed and be seen). It is a unit test's double;
// integration/ runs the real containerd.
type testUpstream struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer

	path   string
	listed []*runtimeapi.Image // what ListImages and StreamImages answer

	// A call carrying holdKey blocks until release is closed or its
	// context ends, to hold it in flight.
	entered chan struct{}
	release chan struct{}
	ctxErr  chan error

	mu     sync.Mutex
	srv    *grpc.Server
	images map[string]*imagesapi.Image // containerd's image store, by name
	pulls  []*runtimeapi.PullImageRequest
	calls  []upstreamCall
	// msgs counts the request messages each method received.
	msgs map[string]int
}

// upstreamCall is what the upstream saw of one call.
type upstreamCall struct {
	method      string
	md          metadata.MD
	deadline    time.Time
	hasDeadline bool
}

const (
	futureUnary  = imageServicePrefix + "SomeFutureMethod"
	futureStream = imageServicePrefix + "SomeFutureStream"
	missingImage = "registry.example/missing:v1"
	// holdKey in a call's metadata makes the upstream hold the call.
	holdKey = "x-hold"
	// answerBytesKey in a call's metadata makes ImageStatus answer with a
	// response of exactly that many bytes.
	answerBytesKey = "x-answer-bytes"
	// echoKey in a call's metadata is echoed in the upstream's header and
	// trailer.
	echoKey = "x-test"
)

// testImageID is the image ID (config digest) every test pull yields.
var testImageID = "sha256:" + strings.Repeat("b", 64)

func newTestUpstream(t testing.TB, dir string, images int) *testUpstream {
	t.Helper()
	u := &testUpstream{
		path:    filepath.Join(dir, "upstream.sock"),
		entered: make(chan struct{}, 16),
		release: make(chan struct{}),
		ctxErr:  make(chan error, 16),
		images:  make(map[string]*imagesapi.Image),
		msgs:    make(map[string]int),
	}
	for i := range images {
		u.listed = append(u.listed, &runtimeapi.Image{
			Id:          fmt.Sprintf("sha256:%064d", i),
			RepoTags:    []string{fmt.Sprintf("registry.example/app-%d:v1", i)},
			RepoDigests: []string{fmt.Sprintf("registry.example/app-%d@sha256:%064d", i, i)},
			Size:        uint64(1000 + i),
			Username:    "nobody",
			Spec:        &runtimeapi.ImageSpec{Image: fmt.Sprintf("registry.example/app-%d:v1", i), Annotations: map[string]string{"i": strconv.Itoa(i)}},
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
		grpc.MaxRecvMsgSize(64<<20), // the proxy's limits are what is tested
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			u.record(ctx, info.FullMethod)
			u.receivedOne(info.FullMethod)
			return handler(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			u.record(ss.Context(), info.FullMethod)
			return handler(srv, &countingStream{ServerStream: ss, u: u, method: info.FullMethod})
		}),
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

func (u *testUpstream) record(ctx context.Context, method string) {
	md, _ := metadata.FromIncomingContext(ctx)
	dl, ok := ctx.Deadline()
	u.mu.Lock()
	defer u.mu.Unlock()
	u.calls = append(u.calls, upstreamCall{method: method, md: md.Copy(), deadline: dl, hasDeadline: ok})
}

func (u *testUpstream) receivedOne(method string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.msgs[method]++
}

// received is how many request messages method received.
func (u *testUpstream) received(method string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.msgs[method]
}

// countingStream counts the messages a streaming call received.
type countingStream struct {
	grpc.ServerStream
	u      *testUpstream
	method string
}

func (s *countingStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		s.u.receivedOne(s.method)
	}
	return err
}

// callsTo returns what the upstream saw of the calls to method, in order.
func (u *testUpstream) callsTo(method string) []upstreamCall {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []upstreamCall
	for _, c := range u.calls {
		if c.method == method {
			out = append(out, c)
		}
	}
	return out
}

// methods returns the name of every call the upstream saw.
func (u *testUpstream) methods() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []string
	for _, c := range u.calls {
		out = append(out, c.method)
	}
	return out
}

// hold blocks a call whose metadata asks for it until the test releases it
// or the call's context ends (reported on ctxErr).
func (u *testUpstream) hold(ctx context.Context) error {
	if len(metadata.ValueFromIncomingContext(ctx, holdKey)) == 0 {
		return nil
	}
	u.entered <- struct{}{}
	select {
	case <-u.release:
		return nil
	case <-ctx.Done():
		u.ctxErr <- ctx.Err()
		return status.FromContextError(ctx.Err()).Err()
	}
}

// echo answers echoKey's value in a header and a trailer.
func echo(ctx context.Context) {
	if v := metadata.ValueFromIncomingContext(ctx, echoKey); len(v) > 0 {
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-echo-header", v[0]))
		_ = grpc.SetTrailer(ctx, metadata.Pairs("x-echo-trailer", v[0]))
	}
}

func (u *testUpstream) ListImages(ctx context.Context, _ *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	echo(ctx)
	return &runtimeapi.ListImagesResponse{Images: u.listed}, nil
}

// StreamImages answers the listed images ten per message.
func (u *testUpstream) StreamImages(_ *runtimeapi.StreamImagesRequest, stream grpc.ServerStreamingServer[runtimeapi.StreamImagesResponse]) error {
	if err := stream.SendHeader(metadata.Pairs("x-stream", "yes")); err != nil {
		return err
	}
	for chunk := range slices.Chunk(u.listed, 10) {
		if err := stream.Send(&runtimeapi.StreamImagesResponse{Images: chunk}); err != nil {
			return err
		}
	}
	return nil
}

// ImageStatus answers from the image store like containerd's CRI: an empty
// response for an unknown name. answerBytesKey asks for a padded answer.
func (u *testUpstream) ImageStatus(ctx context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	if v := metadata.ValueFromIncomingContext(ctx, answerBytesKey); len(v) == 1 {
		n, err := strconv.Atoi(v[0])
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		return paddedStatus(n), nil
	}
	name := normalizeTestRef(req.GetImage().GetImage())
	u.mu.Lock()
	img, ok := u.images[name]
	u.mu.Unlock()
	if !ok || img.Labels[criImageLabel] != criImageLabelValue {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	return &runtimeapi.ImageStatusResponse{Image: &runtimeapi.Image{Id: testImageID, RepoTags: []string{name}, Size: 12345}}, nil
}

// paddedStatus is an ImageStatusResponse whose encoding is exactly n bytes.
func paddedStatus(n int) *runtimeapi.ImageStatusResponse {
	return padTo(n, func(pad string) *runtimeapi.ImageStatusResponse {
		return &runtimeapi.ImageStatusResponse{Info: map[string]string{"pad": pad}}
	})
}

// padTo finds the padding that makes mk's message exactly n bytes long.
func padTo[M proto.Message](n int, mk func(pad string) M) M {
	k := n
	for range 8 {
		m := mk(strings.Repeat("x", k))
		size := proto.Size(m)
		if size == n {
			return m
		}
		k += n - size
	}
	panic(fmt.Sprintf("no padding makes a %d-byte message", n))
}

func (u *testUpstream) RemoveImage(ctx context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	if req.GetImage().GetImage() == missingImage {
		return nil, status.Errorf(codes.NotFound, "image %q: not found", missingImage)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.images, normalizeTestRef(req.GetImage().GetImage()))
	return &runtimeapi.RemoveImageResponse{}, nil
}

func (u *testUpstream) ImageFsInfo(ctx context.Context, _ *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	if err := u.hold(ctx); err != nil {
		return nil, err
	}
	echo(ctx)
	return &runtimeapi.ImageFsInfoResponse{ImageFilesystems: []*runtimeapi.FilesystemUsage{{
		Timestamp:  42,
		FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: "/var/lib/containerd"},
		UsedBytes:  &runtimeapi.UInt64Value{Value: 1 << 30},
		InodesUsed: &runtimeapi.UInt64Value{Value: 1000},
	}}}, nil
}

// PullImage records the request and, like containerd's CRI, stores the image
// under its ID and under the name pulled (with its digest as target when the
// name carries one), labelled as CRI-managed.
func (u *testUpstream) PullImage(ctx context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	u.mu.Lock()
	u.pulls = append(u.pulls, req)
	u.mu.Unlock()
	if err := u.hold(ctx); err != nil {
		return nil, err
	}
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
	u.images[testImageID] = &imagesapi.Image{Name: testImageID, Target: target, Labels: labels}
	u.images[name] = &imagesapi.Image{Name: name, Target: target, Labels: labels}
	return &runtimeapi.PullImageResponse{ImageRef: testImageID}, nil
}

func (u *testUpstream) recordedPulls() []*runtimeapi.PullImageRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.pulls)
}

// The runtime methods answer successfully: pullguard must never relay them,
// and a relayed one would show up as a success and in calls.

func (u *testUpstream) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "test-upstream", RuntimeVersion: "1.0", RuntimeApiVersion: "v1"}, nil
}

func (u *testUpstream) ListContainers(context.Context, *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	return &runtimeapi.ListContainersResponse{}, nil
}

func (u *testUpstream) CreateContainer(context.Context, *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	return &runtimeapi.CreateContainerResponse{ContainerId: "created-1"}, nil
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

// future implements image methods the compiled cri-api does not know: it
// echoes every raw message back with its bytes reversed, and announces itself
// in a header and a trailer. Anything else is unknown, as to containerd.
func (u *testUpstream) future(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	if method != futureUnary && method != futureStream {
		return status.Errorf(codes.Unimplemented, "unknown method %s", method)
	}
	if err := u.hold(ss.Context()); err != nil {
		return err
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
		if err := ss.SendMsg(rawFrame(b)); err != nil {
			return err
		}
	}
}

func rawFrame(b []byte) *frame {
	return &frame{data: mem.BufferSlice{mem.SliceBuffer(b)}}
}

// hasUnknownFields reports whether m or any message inside it kept fields
// its type does not declare.
func hasUnknownFields(m protoreflect.Message) bool {
	if len(m.GetUnknown()) > 0 {
		return true
	}
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					found = hasUnknownFields(mv.Message())
					return !found
				})
			}
		case fd.IsList() && fd.Message() != nil:
			for i := range v.List().Len() {
				if found = hasUnknownFields(v.List().Get(i).Message()); found {
					break
				}
			}
		case fd.Message() != nil:
			found = hasUnknownFields(v.Message())
		}
		return !found
	})
	return found
}

// dialTest connects a CRI client to a unix socket the way kubelet does, but
// with generous limits so that the server's limits are what is tested.
func dialTest(t testing.TB, path string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)),
	}, opts...)
	conn, err := grpc.NewClient("unix://"+path, opts...)
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
		<-time.After(10 * time.Millisecond) // poll interval, not synchronisation
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

// harness runs a test upstream and a proxy in front of it.
type harness struct {
	dir      string
	upstream *testUpstream
	proxy    *Server
	sock     string
	serveErr chan error
	shutdown sync.Once
}

func newHarness(t testing.TB, gate Gate, images int) *harness {
	t.Helper()
	return newHarnessWith(t, Options{Gate: gate}, images)
}

// newHarnessWith runs the proxy with opts, its Upstream set to the test
// upstream.
func newHarnessWith(t testing.TB, opts Options, images int) *harness {
	t.Helper()
	dir := shortTempDir(t)
	h := &harness{dir: dir, upstream: newTestUpstream(t, dir, images), sock: filepath.Join(dir, "run", "pullguard.sock")}
	opts.Upstream = "unix://" + h.upstream.path
	p, err := New(opts)
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
		_ = h.stopProxy(t, time.Second)
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

// imageClient is a CRI image client on a new connection to the proxy.
func (h *harness) imageClient(t testing.TB) runtimeapi.ImageServiceClient {
	t.Helper()
	return runtimeapi.NewImageServiceClient(dialTest(t, h.sock))
}
