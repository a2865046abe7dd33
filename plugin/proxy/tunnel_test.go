package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Many guarded calls answered in every way, mixed with pass-through calls, on
// one client connection: the tunnel's own frames must never overtake a
// call's headers, break the HPACK state both ends share, or leave the flow
// control windows disagreeing. A fast Gate makes the races likely.
func TestGuardedCallsShareOneConnection(t *testing.T) {
	pinned := "registry.example/app@sha256:" + strings.Repeat("d", 64)
	gate := &recordingGate{plan: &PullPlan{
		Forward: &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: pinned}},
	}}
	h := newHarness(t, gate, 50)
	conn := dialTest(t, h.sock)
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	img := runtimeapi.NewImageServiceClient(conn)

	const rounds = 150
	errs := make(chan error, 4*rounds)
	var wg sync.WaitGroup
	for i := range rounds {
		wg.Add(4)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			resp, err := img.PullImage(ctx, pullRequest(fmt.Sprintf("registry.example/app:v%d", i)))
			if err != nil || resp.ImageRef != testImageID {
				errs <- fmt.Errorf("pull %d (answered by the tunnel): %v, %v", i, resp, err)
			}
		}()
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			resp, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
				PodSandboxId: "sb", Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: fmt.Sprint(i)}},
			})
			if err != nil || resp.ContainerId != "created-1" {
				errs <- fmt.Errorf("create %d (forwarded): %v, %v", i, resp, err)
			}
		}()
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			resp, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
			if err != nil || len(resp.Containers) != 50 {
				errs <- fmt.Errorf("list %d (pass-through): %d containers, %v", i, len(resp.GetContainers()), err)
			}
		}()
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			if _, err := rt.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
				errs <- fmt.Errorf("version %d (pass-through): %v", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(h.upstream.recordedCreates()); n != rounds {
		t.Errorf("upstream created %d containers, want %d", n, rounds)
	}
}

// A denied call's message is partly with containerd already; the frame the
// tunnel held back never gets there, and its flow-control credit must be
// given back to the client, or a connection denying enough large requests
// would stall for good.
func TestDeniedCallsGiveWindowBack(t *testing.T) {
	denial := status.Error(codes.Unknown, "SignatureValidationFailed: denied")
	gate := &recordingGate{createErr: denial}
	h := newHarness(t, gate, 0)
	rt := runtimeapi.NewRuntimeServiceClient(dialTest(t, h.sock))
	big := strings.Repeat("x", 60<<10) // several frames per request
	for i := range 100 {               // far more than any window
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		_, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId: "sb",
			Config: &runtimeapi.ContainerConfig{
				Metadata:    &runtimeapi.ContainerMetadata{Name: fmt.Sprint(i)},
				Annotations: map[string]string{"big": big},
			},
		})
		cancel()
		if st := status.Convert(err); st.Code() != codes.Unknown || st.Message() != "SignatureValidationFailed: denied" {
			t.Fatalf("create %d: %v, want the denial", i, err)
		}
	}
	if _, err := rt.Version(t.Context(), &runtimeapi.VersionRequest{}); err != nil {
		t.Errorf("Version after the denials: %v", err)
	}
	if n := len(h.upstream.recordedCreates()); n != 0 {
		t.Errorf("upstream created %d containers after denials", n)
	}
}

// rawClient speaks HTTP/2 frames to the proxy, for what a gRPC client does
// not let a test observe.
func rawClient(t *testing.T, sock string) (*http2.Framer, net.Conn) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, clientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return fr, c
}

// The tunnel answers the client's pings itself (containerd would count the
// pings that follow data the tunnel sent as abuse) and passes everything else
// between the ends.
func TestClientPingAnsweredByTunnel(t *testing.T) {
	h := newHarness(t, nil, 0)
	fr, _ := rawClient(t, h.sock)
	payload := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	if err := fr.WritePing(false, payload); err != nil {
		t.Fatal(err)
	}
	sawSettings, sawAck := false, false
	for !sawSettings || !sawAck {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				sawSettings = true // containerd's, passed through
				if err := fr.WriteSettingsAck(); err != nil {
					t.Fatal(err)
				}
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				continue
			}
			sawAck = true
			if f.Data != payload {
				t.Errorf("ping ack carries %v, want %v", f.Data, payload)
			}
		}
	}
}

// On Shutdown the client is told GOAWAY with the last stream it opened, and
// a stream it starts afterwards never reaches containerd (it is retried on a
// new connection by gRPC clients).
func TestDrainSendsGoAway(t *testing.T) {
	h := newHarness(t, nil, 0)
	rt := runtimeapi.NewRuntimeServiceClient(dialTest(t, h.sock))
	callErr := make(chan error, 1)
	go func() {
		_, err := rt.Status(t.Context(), &runtimeapi.StatusRequest{})
		callErr <- err
	}()
	waitFor(t, h.upstream.statusEntered, "upstream Status entered")

	fr, conn := rawClient(t, h.sock)
	// Open a stream so the raw connection has something in flight.
	var hdr bytes.Buffer
	for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/runtime.v1.RuntimeService/Status"},
		{":authority", "x"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		hdr.Write(appendHpackLiteral(nil, kv[0], kv[1]))
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteData(1, true, []byte{0, 0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, h.upstream.statusEntered, "raw Status entered")

	shutErr := make(chan error, 1)
	go func() { shutErr <- h.stopProxy(t, 30*time.Second) }()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read before GOAWAY: %v", err)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.LastStreamID != 1 || ga.ErrCode != http2.ErrCodeNo {
				t.Errorf("GOAWAY last stream %d code %v, want 1 NO_ERROR", ga.LastStreamID, ga.ErrCode)
			}
			break
		}
	}
	// Stream 3 comes after GOAWAY: the tunnel must drop it.
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: hdr.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteData(3, true, []byte{0, 0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	close(h.upstream.statusRelease)
	if err := <-callErr; err != nil {
		t.Errorf("in-flight gRPC call during drain: %v", err)
	}
	// Stream 1 completes on the raw connection, then the tunnel closes.
	ended := false
	for !ended {
		f, err := fr.ReadFrame()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				break
			}
			t.Fatalf("read after GOAWAY: %v", err)
		}
		if f.Header().StreamID == 3 {
			t.Errorf("stream 3, opened after GOAWAY, got %v", f.Header())
		}
		if f.Header().StreamID == 1 && f.Header().Flags.Has(http2.FlagHeadersEndStream) && f.Header().Type == http2.FrameHeaders {
			ended = true
		}
	}
	if !ended {
		t.Error("stream 1 did not complete before the connection closed")
	}
	select {
	case <-h.upstream.statusEntered:
		t.Error("stream 3, opened after GOAWAY, reached containerd")
	default:
	}
	if err := <-shutErr; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	_ = conn
}

// resetAnsweringUpstream is a minimal HTTP/2 server standing in for a
// containerd that answers a reset stream with its own trailers ("context
// canceled"), which grpc-go servers may do. Only the frame exchange matters
// here, so it is written with the HTTP/2 framer rather than a gRPC server.
func resetAnsweringUpstream(t *testing.T, path string) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				pre := make([]byte, len(clientPreface))
				if _, err := io.ReadFull(c, pre); err != nil {
					return
				}
				fr := http2.NewFramer(c, c)
				_ = fr.WriteSettings()
				var buf bytes.Buffer
				enc := hpack.NewEncoder(&buf) // indexes fields: the client's table must follow
				for {
					f, err := fr.ReadFrame()
					if err != nil {
						return
					}
					switch f := f.(type) {
					case *http2.SettingsFrame:
						if !f.IsAck() {
							_ = fr.WriteSettingsAck()
						}
					case *http2.RSTStreamFrame:
						buf.Reset()
						for _, hf := range []hpack.HeaderField{{Name: ":status", Value: "200"}, {Name: "content-type", Value: "application/grpc"},
							{Name: "grpc-status", Value: "1"}, {Name: "grpc-message", Value: "context canceled"}} {
							_ = enc.WriteField(hf)
						}
						_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: buf.Bytes(), EndHeaders: true, EndStream: true})
					}
				}
			}()
		}
	}()
}

// The tunnel's answer must reach the client before anything containerd says
// about the stream the tunnel reset.
func TestAnswerBeatsUpstreamResetReply(t *testing.T) {
	dir := shortTempDir(t)
	up := filepath.Join(dir, "up.sock")
	resetAnsweringUpstream(t, up)
	denial := status.Error(codes.Unknown, "SignatureValidationFailed: denied")
	p, err := New(Options{Upstream: up, Gate: &recordingGate{pullErr: denial}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "pg.sock")
	l, err := Listen(sock, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.Serve(l) }()
	t.Cleanup(func() { _ = p.Shutdown(context.Background()) })

	img := runtimeapi.NewImageServiceClient(dialTest(t, sock))
	for i := range 30 {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		_, err := img.PullImage(ctx, pullRequest("registry.example/app:v1"))
		cancel()
		if st := status.Convert(err); st.Code() != codes.Unknown || st.Message() != "SignatureValidationFailed: denied" {
			t.Fatalf("pull %d: %v, want the Gate's denial", i, err)
		}
	}
}

// A guarded call whose headers and message arrive in one read: admitted at
// once, it must reach containerd headers first, whole (the decision's frames
// may not overtake the batch that carries the headers).
func TestGuardedCallInOneWrite(t *testing.T) {
	h := newHarness(t, &recordingGate{}, 0)
	for _, tc := range []struct {
		name, path string
		msg        proto.Message
	}{
		{"create", methodCreateContainer, &runtimeapi.CreateContainerRequest{PodSandboxId: "sb"}},
		{"pull", methodPullImage, pullRequest("registry.example/app:v1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fr, conn := rawClient(t, h.sock)
			fr.ReadMetaHeaders = hpack.NewDecoder(defaultHeaderTableSize, nil)
			body, err := proto.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			var block []byte
			for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", tc.path},
				{":authority", "x"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
				block = appendHpackLiteral(block, kv[0], kv[1])
			}
			msg := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(body)))
			out := appendFrameHeader(nil, len(block), frameHeaders, flagEndHeaders, 1)
			out = append(out, block...)
			out = appendDataFrames(out, 1, append(msg, body...), defaultMaxFrameSize, true)
			if _, err := conn.Write(out); err != nil { // one write, one read on the other side
				t.Fatal(err)
			}
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					t.Fatalf("no answer from containerd: %v", err)
				}
				switch f := f.(type) {
				case *http2.SettingsFrame:
					if !f.IsAck() {
						_ = fr.WriteSettingsAck()
					}
				case *http2.MetaHeadersFrame:
					if !f.StreamEnded() {
						if got := f.PseudoValue("status"); got != "200" {
							t.Errorf(":status %q", got)
						}
						continue
					}
					for _, hf := range f.RegularFields() {
						if hf.Name == "grpc-status" && hf.Value != "0" {
							t.Errorf("grpc-status %s: %v", hf.Value, f.RegularFields())
						}
					}
					return
				}
			}
		})
	}
}

// FuzzTunnelClientFrames sends arbitrary bytes after the HTTP/2 preface to a
// guarding proxy in front of a gRPC server: the tunnel must end the
// connection or carry it, never panic or hang, and keep serving others.
func FuzzTunnelClientFrames(f *testing.F) {
	h := newHarness(f, &recordingGate{createErr: status.Error(codes.Unknown, "SignatureValidationFailed: no")}, 0)
	var block []byte
	for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", methodCreateContainer},
		{":authority", "x"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		block = appendHpackLiteral(block, kv[0], kv[1])
	}
	body, _ := proto.Marshal(&runtimeapi.CreateContainerRequest{PodSandboxId: "sb"})
	msg := append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(body))), body...)
	settings := appendFrameHeader(nil, 0, frameSettings, 0, 0)
	headers := append(appendFrameHeader(nil, len(block), frameHeaders, flagEndHeaders, 1), block...)
	split := append(appendFrameHeader(nil, 3, frameHeaders, 0, 1), block[:3]...)
	split = append(append(split, appendFrameHeader(nil, len(block)-3, frameContinuation, flagEndHeaders, 1)...), block[3:]...)
	f.Add(append(append(settings, headers...), appendDataFrames(nil, 1, msg, defaultMaxFrameSize, true)...))
	f.Add(append(append(settings, split...), appendDataFrames(nil, 1, msg[:4], defaultMaxFrameSize, true)...))
	f.Add(append(append(settings, headers...), appendRSTStream(nil, 1, errCodeCancel)...))
	f.Add(appendWindowUpdate(appendFrameHeader(nil, 8, 0x6, 0, 0), 0, 1))
	f.Add([]byte{0xff, 0xff, 0xff, 0x1, 0x4, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.Dial("unix", h.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(append([]byte(clientPreface), data...)); err != nil {
			return // the tunnel may close early on garbage
		}
		_ = c.(*net.UnixConn).CloseWrite()
		// The tunnel ends the connection once it has read everything.
		if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, net.ErrClosed) && !isConnReset(err) {
			t.Fatalf("connection not ended by the tunnel: %v", err)
		}
	})
}

func isConnReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}

// A :path without its leading '/' is guarded as the method it names, whatever
// containerd's gRPC version would make of it. A request naming two paths is
// refused.
func TestGuardedPathSpellings(t *testing.T) {
	denial := status.Error(codes.Unknown, "SignatureValidationFailed: no")
	gate := &recordingGate{createErr: denial}
	h := newHarness(t, gate, 0)
	body, err := proto.Marshal(&runtimeapi.CreateContainerRequest{PodSandboxId: "sb"})
	if err != nil {
		t.Fatal(err)
	}
	msg := append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(body))), body...)
	send := func(paths ...string) *http2.Framer {
		fr, conn := rawClient(t, h.sock)
		fr.ReadMetaHeaders = hpack.NewDecoder(defaultHeaderTableSize, nil)
		var block []byte
		for _, p := range paths {
			block = appendHpackLiteral(block, ":path", p)
		}
		for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "x"},
			{"content-type", "application/grpc"}, {"te", "trailers"}} {
			block = appendHpackLiteral(block, kv[0], kv[1])
		}
		out := append(appendFrameHeader(nil, len(block), frameHeaders, flagEndHeaders, 1), block...)
		out = appendDataFrames(out, 1, msg, defaultMaxFrameSize, true)
		if _, err := conn.Write(out); err != nil {
			t.Fatal(err)
		}
		return fr
	}
	// grpc-status of stream 1, or "" if the connection ended first.
	result := func(fr *http2.Framer) string {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return ""
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					_ = fr.WriteSettingsAck()
				}
			case *http2.MetaHeadersFrame:
				if f.StreamEnded() {
					for _, hf := range f.RegularFields() {
						if hf.Name == "grpc-status" {
							return hf.Value
						}
					}
				}
			}
		}
	}
	// This grpc-go refuses the path at once (12, Unimplemented), which may
	// reach the client before the denial (2): either is a refusal. What
	// matters is that the Gate was asked.
	if got := result(send(strings.TrimPrefix(methodCreateContainer, "/"))); got != "2" && got != "12" {
		t.Errorf("CreateContainer without the leading '/': grpc-status %q, want a refusal", got)
	}
	eventually(t, 10*time.Second, "the Gate to be asked", func() error {
		gate.mu.Lock()
		defer gate.mu.Unlock()
		if len(gate.creates) != 1 {
			return fmt.Errorf("gate saw %d creates", len(gate.creates))
		}
		return nil
	})
	if got := result(send(methodVersionForTest, methodCreateContainer)); got != "" {
		t.Errorf("two :path headers: grpc-status %q, want the connection refused", got)
	}
	if n := len(h.upstream.recordedCreates()); n != 0 {
		t.Errorf("containerd created %d containers", n)
	}
}

const methodVersionForTest = "/runtime.v1.RuntimeService/Version"
