package imageproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/pullguard/pullguard/plugin/enforce"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Every image method of the compiled cri-api but PullImage reaches containerd
// as the client sent it and comes back as containerd answered, once.
func TestImageMethodsRelayedUnchanged(t *testing.T) {
	const images = 500
	h := newHarness(t, &recordingGate{}, images)
	known := "registry.example/known:v1"
	if _, err := h.upstream.PullImage(t.Context(), pullRequest(known)); err != nil {
		t.Fatal(err)
	}
	img := h.imageClient(t)
	tests := []struct {
		method string
		call   func(ctx context.Context) (proto.Message, error)
		want   proto.Message
	}{
		{
			method: imageServicePrefix + "ListImages",
			call: func(ctx context.Context) (proto.Message, error) {
				return img.ListImages(ctx, &runtimeapi.ListImagesRequest{Filter: &runtimeapi.ImageFilter{}})
			},
			want: &runtimeapi.ListImagesResponse{Images: h.upstream.listed},
		},
		{
			method: imageServicePrefix + "ImageStatus",
			call: func(ctx context.Context) (proto.Message, error) {
				return img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: known}, Verbose: true})
			},
			want: &runtimeapi.ImageStatusResponse{Image: &runtimeapi.Image{Id: testImageID, RepoTags: []string{known}, Size: 12345}},
		},
		{
			method: imageServicePrefix + "ImageFsInfo",
			call: func(ctx context.Context) (proto.Message, error) {
				return img.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
			},
			want: &runtimeapi.ImageFsInfoResponse{ImageFilesystems: []*runtimeapi.FilesystemUsage{{
				Timestamp:  42,
				FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: "/var/lib/containerd"},
				UsedBytes:  &runtimeapi.UInt64Value{Value: 1 << 30},
				InodesUsed: &runtimeapi.UInt64Value{Value: 1000},
			}}},
		},
		{
			method: imageServicePrefix + "RemoveImage",
			call: func(ctx context.Context) (proto.Message, error) {
				return img.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: known}})
			},
			want: &runtimeapi.RemoveImageResponse{},
		},
		{
			// Server-streaming: carried by the streaming relay.
			method: imageServicePrefix + "StreamImages",
			call: func(ctx context.Context) (proto.Message, error) {
				stream, err := img.StreamImages(ctx, &runtimeapi.StreamImagesRequest{})
				if err != nil {
					return nil, err
				}
				if h, err := stream.Header(); err != nil || len(h.Get("x-stream")) != 1 {
					return nil, fmt.Errorf("stream header %v, %v; want the upstream's", h, err)
				}
				all := &runtimeapi.ListImagesResponse{}
				for {
					resp, err := stream.Recv()
					if errors.Is(err, io.EOF) {
						return all, nil
					}
					if err != nil {
						return nil, err
					}
					if len(resp.Images) != 10 {
						return nil, fmt.Errorf("a message of %d images, want the upstream's 10", len(resp.Images))
					}
					all.Images = append(all.Images, resp.Images...)
				}
			},
			want: &runtimeapi.ListImagesResponse{Images: h.upstream.listed},
		},
	}
	for _, tc := range tests {
		t.Run(strings.TrimPrefix(tc.method, imageServicePrefix), func(t *testing.T) {
			got, err := tc.call(t.Context())
			if err != nil {
				t.Fatalf("%s: %v", tc.method, err)
			}
			if !proto.Equal(got, tc.want) {
				t.Errorf("%s answered %d bytes, want the upstream's %d unchanged", tc.method, proto.Size(got), proto.Size(tc.want))
			}
			if n := len(h.upstream.callsTo(tc.method)); n != 1 {
				t.Errorf("upstream saw %s %d times, want once", tc.method, n)
			}
		})
	}
	if n := len(h.upstream.listed); n != images {
		t.Fatalf("test upstream lists %d images, want %d", n, images)
	}
}

// containerd's status code and message reach the client as containerd sent
// them, whichever relay carried the call.
func TestStatusCodeAndMessagePreserved(t *testing.T) {
	h := newHarness(t, nil, 0)
	conn := dialTest(t, h.sock)
	img := runtimeapi.NewImageServiceClient(conn)
	codec, err := newRawCodec()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		call     func(ctx context.Context) error
		wantCode codes.Code
		wantMsg  string
	}{
		{
			name: "unary relay",
			call: func(ctx context.Context) error {
				_, err := img.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: missingImage}})
				return err
			},
			wantCode: codes.NotFound, wantMsg: `image "` + missingImage + `": not found`,
		},
		{
			name: "stream relay",
			call: func(ctx context.Context) error {
				var resp frame
				defer resp.free()
				return conn.Invoke(ctx, imageServicePrefix+"NoSuchMethod", rawFrame([]byte{1}), &resp, grpc.ForceCodecV2(codec))
			},
			wantCode: codes.Unimplemented, wantMsg: "unknown method " + imageServicePrefix + "NoSuchMethod",
		},
		{
			name: "upstream's own validation",
			call: func(ctx context.Context) error {
				ctx = metadata.AppendToOutgoingContext(ctx, answerBytesKey, "many")
				_, err := img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "a"}})
				return err
			},
			wantCode: codes.InvalidArgument, wantMsg: `strconv.Atoi: parsing "many": invalid syntax`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(tc.call(t.Context()))
			if st.Code() != tc.wantCode || st.Message() != tc.wantMsg {
				t.Errorf("got %v %q, want %v %q", st.Code(), st.Message(), tc.wantCode, tc.wantMsg)
			}
		})
	}
}

// The client's metadata (binary values included) and deadline reach
// containerd and containerd's header and trailer come back; what belongs to
// the client's own connection (user-agent, grpc- headers) does not travel.
func TestMetadataAndDeadlinePropagate(t *testing.T) {
	h := newHarness(t, nil, 0)
	conn := dialTest(t, h.sock, grpc.WithUserAgent("test-kubelet/1.0"))
	img := runtimeapi.NewImageServiceClient(conn)
	codec, err := newRawCodec()
	if err != nil {
		t.Fatal(err)
	}
	binValue := string([]byte{0, 1, 2, 0xff})
	calls := []struct {
		method string
		call   func(ctx context.Context, header, trailer *metadata.MD) error
	}{
		{imageServicePrefix + "ImageFsInfo", func(ctx context.Context, header, trailer *metadata.MD) error {
			_, err := img.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{}, grpc.Header(header), grpc.Trailer(trailer))
			return err
		}},
		{futureUnary, func(ctx context.Context, header, trailer *metadata.MD) error {
			var resp frame
			defer resp.free()
			return conn.Invoke(ctx, futureUnary, rawFrame([]byte{1, 2}), &resp, grpc.ForceCodecV2(codec), grpc.Header(header), grpc.Trailer(trailer))
		}},
	}
	for _, c := range calls {
		for _, withDeadline := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/deadline=%v", strings.TrimPrefix(c.method, imageServicePrefix), withDeadline), func(t *testing.T) {
				ctx := t.Context()
				var clientDeadline time.Time
				if withDeadline {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, time.Hour)
					defer cancel()
					clientDeadline, _ = ctx.Deadline()
				}
				ctx = metadata.AppendToOutgoingContext(ctx, echoKey, "abc", "x-bin-bin", binValue, "grpc-client-only", "1")
				before := len(h.upstream.callsTo(c.method))
				var header, trailer metadata.MD
				if err := c.call(ctx, &header, &trailer); err != nil {
					t.Fatalf("%s: %v", c.method, err)
				}
				if c.method != futureUnary {
					if got := header.Get("x-echo-header"); !slices.Equal(got, []string{"abc"}) {
						t.Errorf("header x-echo-header = %q, want the upstream's [abc]", got)
					}
					if got := trailer.Get("x-echo-trailer"); !slices.Equal(got, []string{"abc"}) {
						t.Errorf("trailer x-echo-trailer = %q, want the upstream's [abc]", got)
					}
				} else if !slices.Equal(header.Get("x-future"), []string{"header"}) || !slices.Equal(trailer.Get("x-future-trailer"), []string{"trailer"}) {
					t.Errorf("header %v trailer %v, want the upstream's", header, trailer)
				}

				seen := h.upstream.callsTo(c.method)
				if len(seen) != before+1 {
					t.Fatalf("upstream saw %d calls, want %d", len(seen), before+1)
				}
				up := seen[len(seen)-1]
				if got := up.md.Get(echoKey); !slices.Equal(got, []string{"abc"}) {
					t.Errorf("upstream saw %s = %q, want [abc]", echoKey, got)
				}
				if got := up.md.Get("x-bin-bin"); !slices.Equal(got, []string{binValue}) {
					t.Errorf("upstream saw x-bin-bin = %q, want the client's binary value", got)
				}
				if got := up.md.Get("grpc-client-only"); len(got) != 0 {
					t.Errorf("upstream saw grpc-client-only = %q: a grpc- header crossed", got)
				}
				for _, ua := range up.md.Get("user-agent") {
					if strings.Contains(ua, "test-kubelet") {
						t.Errorf("upstream saw user-agent %q: the client's crossed", ua)
					}
				}
				if up.hasDeadline != withDeadline {
					t.Fatalf("upstream had a deadline: %v, want %v", up.hasDeadline, withDeadline)
				}
				// Deadlines travel as relative timeouts, rounded up to the
				// unit they are sent in: the upstream's is the client's less
				// the transit.
				if withDeadline && (up.deadline.After(clientDeadline.Add(50*time.Millisecond)) || up.deadline.Before(clientDeadline.Add(-10*time.Second))) {
					t.Errorf("upstream deadline %v, want just before the client's %v", up.deadline, clientDeadline)
				}
			})
		}
	}
}

// A client giving up ends pullguard's call to containerd too, whichever way
// pullguard makes it.
func TestCancellationPropagates(t *testing.T) {
	h := newHarness(t, &recordingGate{}, 0)
	conn := dialTest(t, h.sock)
	img := runtimeapi.NewImageServiceClient(conn)
	codec, err := newRawCodec()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"unary relay", func(ctx context.Context) error {
			_, err := img.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
			return err
		}},
		{"stream relay", func(ctx context.Context) error {
			var resp frame
			defer resp.free()
			return conn.Invoke(ctx, futureUnary, rawFrame([]byte{1}), &resp, grpc.ForceCodecV2(codec))
		}},
		{"admitted pull", func(ctx context.Context) error {
			_, err := img.PullImage(ctx, pullRequest("registry.example/app:v1"))
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(t.Context(), holdKey, "1"))
			errc := make(chan error, 1)
			go func() { errc <- tc.call(ctx) }()
			waitFor(t, h.upstream.entered, "upstream call entered")
			cancel()
			if err := waitFor(t, errc, "client call ended"); status.Code(err) != codes.Canceled {
				t.Errorf("client got %v, want Canceled", err)
			}
			if err := waitFor(t, h.upstream.ctxErr, "upstream saw the cancellation"); !errors.Is(err, context.Canceled) {
				t.Errorf("upstream context ended with %v, want context.Canceled", err)
			}
		})
	}
}

// Messages up to 16 MiB pass both ways, like straight to containerd; one byte
// more is refused by pullguard, and an oversized request never reaches
// containerd.
func TestMessageSizeLimits(t *testing.T) {
	h := newHarness(t, nil, 0)
	conn := dialTest(t, h.sock) // accepts 64 MiB: the proxy's bound is tested
	img := runtimeapi.NewImageServiceClient(conn)
	codec, err := newRawCodec()
	if err != nil {
		t.Fatal(err)
	}
	statusReq := func(n int) *runtimeapi.ImageStatusRequest {
		return padTo(n, func(pad string) *runtimeapi.ImageStatusRequest {
			return &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "registry.example/app:v1", Annotations: map[string]string{"pad": pad}}}
		})
	}
	small := &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "registry.example/app:v1"}}
	const limit = DefaultMaxMessageBytes
	tests := []struct {
		name      string
		method    string
		call      func(ctx context.Context) (int, error) // bytes answered
		wantErr   bool
		wantBytes int // answered; 0 = not checked
		// wantReached is whether the upstream got the call's message.
		wantReached bool
	}{
		{name: "request at the limit", method: imageServicePrefix + "ImageStatus", call: func(ctx context.Context) (int, error) {
			resp, err := img.ImageStatus(ctx, statusReq(limit))
			return proto.Size(resp), err
		}, wantReached: true},
		{name: "request over the limit", method: imageServicePrefix + "ImageStatus", call: func(ctx context.Context) (int, error) {
			resp, err := img.ImageStatus(ctx, statusReq(limit+1))
			return proto.Size(resp), err
		}, wantErr: true},
		{name: "response at the limit", method: imageServicePrefix + "ImageStatus", call: func(ctx context.Context) (int, error) {
			resp, err := img.ImageStatus(metadata.AppendToOutgoingContext(ctx, answerBytesKey, strconv.Itoa(limit)), small)
			return proto.Size(resp), err
		}, wantBytes: limit, wantReached: true},
		{name: "response over the limit", method: imageServicePrefix + "ImageStatus", call: func(ctx context.Context) (int, error) {
			resp, err := img.ImageStatus(metadata.AppendToOutgoingContext(ctx, answerBytesKey, strconv.Itoa(limit+1)), small)
			return proto.Size(resp), err
		}, wantErr: true, wantReached: true},
		{name: "stream relay at the limit", method: futureUnary, call: func(ctx context.Context) (int, error) {
			var resp frame
			defer resp.free()
			err := conn.Invoke(ctx, futureUnary, rawFrame(make([]byte, limit)), &resp, grpc.ForceCodecV2(codec))
			return resp.data.Len(), err
		}, wantBytes: limit, wantReached: true},
		{name: "stream relay over the limit", method: futureUnary, call: func(ctx context.Context) (int, error) {
			var resp frame
			defer resp.free()
			err := conn.Invoke(ctx, futureUnary, rawFrame(make([]byte, limit+1)), &resp, grpc.ForceCodecV2(codec))
			return resp.data.Len(), err
		}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := h.upstream.received(tc.method)
			n, err := tc.call(t.Context())
			if tc.wantErr {
				if status.Code(err) != codes.ResourceExhausted {
					t.Errorf("got %d bytes, %v; want ResourceExhausted", n, err)
				}
			} else if err != nil || (tc.wantBytes != 0 && n != tc.wantBytes) {
				t.Errorf("got %d bytes, %v; want %d bytes", n, err, tc.wantBytes)
			}
			if reached := h.upstream.received(tc.method) > before; reached != tc.wantReached {
				t.Errorf("the message reached the upstream: %v, want %v", reached, tc.wantReached)
			}
		})
	}
}

// Image methods newer than the compiled cri-api reach containerd as raw
// messages, whatever their shape; one containerd does not know either gets
// containerd's answer.
func TestUnknownImageMethodRelayedRaw(t *testing.T) {
	h := newHarness(t, &recordingGate{pullErr: status.Error(codes.Unknown, "denied")}, 0)
	conn := dialTest(t, h.sock)
	codec, err := newRawCodec()
	if err != nil {
		t.Fatal(err)
	}
	// Not a valid protobuf message: only a byte-exact relay gets it through.
	payload := []byte{0xff, 0xff, 0xff, 0x01, 'f', 'u', 't', 'u', 'r', 'e'}
	want := slices.Clone(payload)
	slices.Reverse(want)

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
		if !slices.Equal(header.Get("x-future"), []string{"header"}) || !slices.Equal(trailer.Get("x-future-trailer"), []string{"trailer"}) {
			t.Errorf("header %v trailer %v, want the upstream's", header, trailer)
		}
	})

	t.Run("bidi stream", func(t *testing.T) {
		cs, err := conn.NewStream(t.Context(), &anyStream, futureStream, grpc.ForceCodecV2(codec))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			msg := append(slices.Clone(payload), byte(i))
			if err := cs.SendMsg(rawFrame(msg)); err != nil {
				t.Fatalf("send: %v", err)
			}
			var resp frame
			if err := cs.RecvMsg(&resp); err != nil {
				t.Fatalf("recv: %v", err)
			}
			slices.Reverse(msg)
			if !bytes.Equal(resp.bytes(), msg) {
				t.Errorf("echo %x, want %x", resp.bytes(), msg)
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
		if got := cs.Trailer().Get("x-future-trailer"); !slices.Equal(got, []string{"trailer"}) {
			t.Errorf("trailer %v, want the upstream's", cs.Trailer())
		}
	})

	for _, m := range []string{futureUnary, futureStream} {
		if n := len(h.upstream.callsTo(m)); n != 1 {
			t.Errorf("upstream saw %s %d times, want once", m, n)
		}
	}
}

// The runtime service is containerd's own socket's business: pullguard
// answers Unimplemented, naming that socket, and containerd never sees the
// call. Nor any other service (containerd's native APIs included).
func TestNonImageServicesRefused(t *testing.T) {
	h := newHarness(t, nil, 0)
	conn := dialTest(t, h.sock)
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	codec, err := newRawCodec()
	if err != nil {
		t.Fatal(err)
	}
	raw := func(method string) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			var resp frame
			defer resp.free()
			return conn.Invoke(ctx, method, rawFrame(nil), &resp, grpc.ForceCodecV2(codec))
		}
	}
	tests := []struct {
		name    string
		call    func(ctx context.Context) error
		wantMsg string // substring of the refusal
	}{
		{"Version", func(ctx context.Context) error {
			_, err := rt.Version(ctx, &runtimeapi.VersionRequest{})
			return err
		}, h.upstream.path},
		{"ListContainers", func(ctx context.Context) error {
			_, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
			return err
		}, h.upstream.path},
		{"CreateContainer", func(ctx context.Context) error {
			_, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: "sb"})
			return err
		}, h.upstream.path},
		{"runtime method newer than cri-api", raw(runtimeServicePrefix + "SomeFutureMethod"), h.upstream.path},
		{"containerd images API", raw("/containerd.services.images.v1.Images/Create"), "unknown service"},
		{"another CRI version", raw("/runtime.v1alpha2.ImageService/PullImage"), "unknown service"},
		{"image service as a prefix", raw("/runtime.v1.ImageServiceX/PullImage"), "unknown service"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(tc.call(t.Context()))
			if st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), tc.wantMsg) {
				t.Errorf("got %v %q, want Unimplemented naming %q", st.Code(), st.Message(), tc.wantMsg)
			}
		})
	}
	if m := h.upstream.methods(); len(m) != 0 {
		t.Errorf("upstream saw %v, want nothing", m)
	}
}

// containerd going away fails calls fast with Unavailable; once it is back,
// calls work again without restarting pullguard.
func TestUpstreamDownThenBack(t *testing.T) {
	h := newHarness(t, nil, 0)
	img := h.imageClient(t)
	if _, err := img.ImageFsInfo(t.Context(), &runtimeapi.ImageFsInfoRequest{}); err != nil {
		t.Fatalf("ImageFsInfo before the outage: %v", err)
	}
	if err := h.proxy.UpstreamReady(t.Context()); err != nil {
		t.Fatalf("UpstreamReady before the outage: %v", err)
	}

	h.upstream.stop()
	// A long deadline: failing fast means Unavailable, not DeadlineExceeded.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for range 3 {
		start := time.Now()
		_, err := img.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("upstream down: got %v, want Unavailable", err)
		}
		if d := time.Since(start); d > 20*time.Second {
			t.Errorf("refusal took %v, want it fast", d)
		}
	}
	if err := h.proxy.UpstreamReady(ctx); err == nil {
		t.Error("UpstreamReady = nil with the upstream down")
	}

	h.upstream.start(t)
	eventually(t, 20*time.Second, "ImageFsInfo after the upstream restarted", func() error {
		_, err := img.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
		return err
	})
	if err := h.proxy.UpstreamReady(ctx); err != nil {
		t.Errorf("UpstreamReady after the restart: %v", err)
	}
}

func TestShutdownDrainsInFlightCall(t *testing.T) {
	h := newHarness(t, nil, 0)
	img := h.imageClient(t)
	callErr := make(chan error, 1)
	go func() {
		_, err := img.ImageFsInfo(metadata.AppendToOutgoingContext(t.Context(), holdKey, "1"), &runtimeapi.ImageFsInfoRequest{})
		callErr <- err
	}()
	waitFor(t, h.upstream.entered, "upstream ImageFsInfo entered")

	shutErr := make(chan error, 1)
	go func() { shutErr <- h.stopProxy(t, time.Minute) }()
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

	close(h.upstream.release)
	if err := waitFor(t, callErr, "in-flight call"); err != nil {
		t.Errorf("in-flight call during Shutdown: %v, want success", err)
	}
	if err := waitFor(t, shutErr, "Shutdown"); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func TestShutdownForcesAfterDeadline(t *testing.T) {
	h := newHarness(t, nil, 0)
	img := h.imageClient(t)
	callErr := make(chan error, 1)
	go func() {
		_, err := img.ImageFsInfo(metadata.AppendToOutgoingContext(t.Context(), holdKey, "1"), &runtimeapi.ImageFsInfoRequest{})
		callErr <- err
	}()
	waitFor(t, h.upstream.entered, "upstream ImageFsInfo entered")

	start := time.Now()
	err := h.stopProxy(t, 200*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown past its deadline: %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Shutdown took %v with a 200ms grace", d)
	}
	if err := waitFor(t, callErr, "in-flight call"); err == nil {
		t.Error("in-flight call succeeded after a forced shutdown")
	}
	if err := waitFor(t, h.upstream.ctxErr, "upstream saw the cancellation"); err == nil {
		t.Error("upstream call was not cancelled")
	}
}

// Shutdown is not held up by the connection limit: with every slot taken and
// a client waiting in the listen backlog, it returns, Serve returns nil, and
// the waiting client is told the server is gone.
func TestShutdownAtConnectionLimit(t *testing.T) {
	h := newHarnessWith(t, Options{MaxConnections: 1}, 0)
	if _, err := h.imageClient(t).ImageFsInfo(t.Context(), &runtimeapi.ImageFsInfoRequest{}); err != nil {
		t.Fatalf("the client holding the only slot: %v", err)
	}
	queued := h.imageClient(t)
	queuedErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := queued.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
		queuedErr <- err
	}()
	start := time.Now()
	if err := h.stopProxy(t, time.Minute); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > answerWithin {
		t.Errorf("Shutdown took %v", d)
	}
	if err := waitFor(t, queuedErr, "the queued client's call"); status.Code(err) != codes.Unavailable {
		t.Errorf("the client waiting for a slot got %v, want Unavailable", err)
	}
}

// recordingGate is a Gate for tests: it records what it was asked, with the
// deadline it saw, and answers with decide when set, else plan and pullErr.
type recordingGate struct {
	mu        sync.Mutex
	pulls     []*runtimeapi.PullImageRequest
	deadlines []gateDeadline
	admitted  int
	plan      *PullPlan
	pullErr   error
	decide    func(ctx context.Context, req *runtimeapi.PullImageRequest) (*PullPlan, error)
}

// gateDeadline is the context a decision was made under.
type gateDeadline struct {
	deadline    time.Time
	hasDeadline bool
	expired     bool
}

func (g *recordingGate) AdmitPull(ctx context.Context, req *runtimeapi.PullImageRequest) (*PullPlan, error) {
	dl, ok := ctx.Deadline()
	g.mu.Lock()
	g.pulls = append(g.pulls, req)
	g.deadlines = append(g.deadlines, gateDeadline{deadline: dl, hasDeadline: ok, expired: ctx.Err() != nil})
	decide := g.decide
	plan, err := g.plan, g.pullErr
	g.mu.Unlock()
	if decide != nil {
		plan, err = decide(ctx, req)
	}
	if err == nil {
		g.mu.Lock()
		g.admitted++
		g.mu.Unlock()
	}
	return plan, err
}

func (g *recordingGate) asked() ([]*runtimeapi.PullImageRequest, []gateDeadline, int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.pulls), slices.Clone(g.deadlines), g.admitted
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
		{name: "invalid name", err: status.Error(codes.InvalidArgument, "InvalidImageName: bad"), wantErr: status.Error(codes.InvalidArgument, "InvalidImageName: bad")},
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
			req := pullRequest("registry.example/app:v1")
			resp, err := h.imageClient(t).PullImage(t.Context(), req)

			asked, _, _ := gate.asked()
			if len(asked) != 1 || !proto.Equal(asked[0], req) {
				t.Fatalf("gate saw %v, want exactly the client's request decoded", asked)
			}
			pulls := h.upstream.recordedPulls()
			if tc.wantErr != nil {
				want := status.Convert(tc.wantErr)
				if got := status.Convert(err); got.Code() != want.Code() || got.Message() != want.Message() {
					t.Errorf("got %v %q, want %v %q", got.Code(), got.Message(), want.Code(), want.Message())
				}
				if m := h.upstream.methods(); len(m) != 0 {
					t.Errorf("denied pull reached upstream: %v", m)
				}
				return
			}
			if err != nil {
				t.Fatalf("PullImage: %v", err)
			}
			if resp.ImageRef != testImageID {
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

// A PullImage pullguard cannot decode cannot be decided: it is refused, and
// neither the Gate nor containerd sees it.
func TestPullUndecodableRefused(t *testing.T) {
	gate := &recordingGate{}
	h := newHarness(t, gate, 0)
	conn := dialTest(t, h.sock)
	codec, err := newRawCodec()
	if err != nil {
		t.Fatal(err)
	}
	for _, body := range [][]byte{
		{0xff, 0xff, 0xff},       // truncated varint tag
		{0x0a, 0x05, 0x0a, 0x01}, // ImageSpec whose length overruns the message
		{0x0a, 0x02, 0x0a, 0xff}, // image name overrunning its ImageSpec
	} {
		var resp frame
		err := conn.Invoke(t.Context(), methodPullImage, rawFrame(body), &resp, grpc.ForceCodecV2(codec))
		resp.free()
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "decode PullImageRequest") {
			t.Errorf("PullImage %x: got %v, want InvalidArgument", body, err)
		}
	}
	if asked, _, _ := gate.asked(); len(asked) != 0 {
		t.Errorf("gate was asked about %v", asked)
	}
	if m := h.upstream.methods(); len(m) != 0 {
		t.Errorf("upstream saw %v", m)
	}
}

// Fields this cri-api does not know could make containerd do what pullguard
// never decided on: they do not reach containerd from a decided pull.
func TestPullUnknownFieldsDropped(t *testing.T) {
	unknown := protowire.AppendTag(nil, 999, protowire.BytesType)
	unknown = protowire.AppendBytes(unknown, []byte("do something else"))
	req := pullRequest("registry.example/app:v1")
	req.ProtoReflect().SetUnknown(unknown)
	req.Image.ProtoReflect().SetUnknown(unknown)
	req.SandboxConfig.Metadata.ProtoReflect().SetUnknown(unknown)
	body, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	pinned := "registry.example/app@sha256:" + strings.Repeat("d", 64)
	tests := []struct {
		name        string
		gate        Gate
		wantUnknown bool
	}{
		{name: "admitted unchanged", gate: &recordingGate{}},
		{name: "admitted rewritten", gate: &recordingGate{decide: func(_ context.Context, r *runtimeapi.PullImageRequest) (*PullPlan, error) {
			fwd := proto.Clone(r).(*runtimeapi.PullImageRequest)
			fwd.Image.Image = pinned
			return &PullPlan{Forward: fwd}, nil
		}}},
		// With no Gate nothing is decided and PullImage is relayed as it
		// came, like every other image call.
		{name: "no gate", gate: nil, wantUnknown: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.gate, 0)
			conn := dialTest(t, h.sock)
			codec, err := newRawCodec()
			if err != nil {
				t.Fatal(err)
			}
			var resp frame
			defer resp.free()
			if err := conn.Invoke(t.Context(), methodPullImage, rawFrame(body), &resp, grpc.ForceCodecV2(codec)); err != nil {
				t.Fatalf("PullImage: %v", err)
			}
			if g, ok := tc.gate.(*recordingGate); ok {
				asked, _, _ := g.asked()
				if len(asked) != 1 || hasUnknownFields(asked[0].ProtoReflect()) {
					t.Errorf("gate saw %v, want one request without unknown fields", asked)
				}
			}
			pulls := h.upstream.recordedPulls()
			if len(pulls) != 1 {
				t.Fatalf("upstream saw %d pulls, want 1", len(pulls))
			}
			if got := hasUnknownFields(pulls[0].ProtoReflect()); got != tc.wantUnknown {
				t.Errorf("upstream's request has unknown fields: %v, want %v", got, tc.wantUnknown)
			}
			if pulls[0].GetAuth().GetPassword() != "secret" || pulls[0].GetSandboxConfig().GetMetadata().GetNamespace() != "team-a" {
				t.Errorf("upstream's request lost known fields: %v", pulls[0])
			}
		})
	}
}

func TestSetGateSwitchesEnforcement(t *testing.T) {
	h := newHarness(t, nil, 0)
	img := h.imageClient(t)
	if _, err := img.PullImage(t.Context(), pullRequest("a:1")); err != nil {
		t.Fatalf("pull with no gate: %v", err)
	}
	deny := &recordingGate{pullErr: status.Error(codes.Unknown, "SignatureValidationFailed: no")}
	h.proxy.SetGate(deny)
	if _, err := img.PullImage(t.Context(), pullRequest("a:1")); status.Code(err) != codes.Unknown {
		t.Errorf("pull after SetGate(deny): %v, want the denial", err)
	}
	admit := &recordingGate{}
	h.proxy.SetGate(admit)
	if _, err := img.PullImage(t.Context(), pullRequest("a:1")); err != nil {
		t.Errorf("pull after SetGate(admit): %v", err)
	}
	h.proxy.SetGate(nil)
	if _, err := img.PullImage(t.Context(), pullRequest("a:1")); err != nil {
		t.Errorf("pull after SetGate(nil): %v", err)
	}
	if _, _, n := deny.asked(); n != 0 {
		t.Errorf("denying gate admitted %d", n)
	}
	if asked, _, _ := admit.asked(); len(asked) != 1 {
		t.Errorf("admitting gate asked %d times, want once (only while set)", len(asked))
	}
	if n := len(h.upstream.recordedPulls()); n != 3 {
		t.Errorf("upstream saw %d pulls, want 3", n)
	}
}

// OnImagesChanged is told after each pull made and each removal relayed,
// and not for a denied pull or a call that changes nothing.
func TestImagesChangedHook(t *testing.T) {
	var changed atomic.Int32
	gate := &recordingGate{}
	h := newHarnessWith(t, Options{Gate: gate, OnImagesChanged: func() { changed.Add(1) }}, 3)
	img := h.imageClient(t)
	waitChanged := func(want int32) {
		t.Helper()
		eventually(t, 10*time.Second, fmt.Sprintf("OnImagesChanged called %d times", want), func() error {
			if n := changed.Load(); n != want {
				return fmt.Errorf("called %d times", n)
			}
			return nil
		})
	}
	steps := []struct {
		name string
		call func(ctx context.Context) error
		want int32 // total calls to the hook after this step
	}{
		{"admitted pull", func(ctx context.Context) error {
			_, err := img.PullImage(ctx, pullRequest("registry.example/app:v1"))
			return err
		}, 1},
		{"denied pull", func(ctx context.Context) error {
			gate.mu.Lock()
			gate.pullErr = status.Error(codes.Unknown, "denied")
			gate.mu.Unlock()
			_, err := img.PullImage(ctx, pullRequest("registry.example/app:v1"))
			if status.Code(err) != codes.Unknown {
				return fmt.Errorf("denied pull: %v", err)
			}
			return nil
		}, 1},
		{"list", func(ctx context.Context) error {
			_, err := img.ListImages(ctx, &runtimeapi.ListImagesRequest{})
			return err
		}, 1},
		{"remove", func(ctx context.Context) error {
			_, err := img.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: "registry.example/app:v1"}})
			return err
		}, 2},
	}
	for _, s := range steps {
		if err := s.call(t.Context()); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		// The hook runs after the answer is sent: wait for the count, and
		// the step that follows shows a late extra call.
		waitChanged(s.want)
	}
	h.proxy.SetImagesChanged(func() {})
	if _, err := img.RemoveImage(t.Context(), &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: "x"}}); err != nil {
		t.Fatal(err)
	}
	if n := changed.Load(); n != 2 {
		t.Errorf("hook called %d times after it was replaced, want 2", n)
	}
}

// TestCategoriesAreCRIReasons: the message prefixes of denials are the CRI's own reasons, which
// kubelet maps to the pod's reason; a drift would turn denials into plain ErrImagePull.
func TestCategoriesAreCRIReasons(t *testing.T) {
	for cat, sentinel := range criReasons {
		d := &enforce.Decision{Verdict: enforce.Deny, Category: cat, Image: "registry.example.com/app:v1", Reason: "r"}
		st := status.Convert(denialError(d))
		if string(cat) != sentinel.Error() || !strings.HasPrefix(st.Message(), sentinel.Error()+": ") || st.Code() != codes.Unknown {
			t.Errorf("category %q: sentinel %q, denial %s %q", cat, sentinel, st.Code(), st.Message())
		}
	}
}
