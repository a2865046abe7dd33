package imageproxy

// Wire-level attacks on pullguard's socket, by a client speaking raw HTTP/2.
// Each of them got an undecided pull to containerd, or tied the old frame
// tunnel up, when pullguard parsed the wire itself. grpc-go now terminates
// the connection; these tests hold its handling to the same three things:
// nothing undecided reaches containerd, other clients keep being served, and
// what one connection costs stays bounded.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
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

const (
	// smuggledImage is what the attacks try to get pulled.
	smuggledImage = "registry.example/smuggled:v1"
	// denialMessage is the attack tests' Gate's answer to a denied pull.
	denialMessage = "SignatureValidationFailed: smuggled pull denied"
	// answerWithin bounds how long pullguard may take to answer a
	// well-behaved call, or to be done with an attack, on a loaded 2-core
	// machine under the race detector.
	answerWithin = 5 * time.Second
)

// rawH2 is a client connection speaking HTTP/2 frames, for requests a gRPC
// client never sends.
type rawH2 struct {
	conn net.Conn
	fr   *http2.Framer
	bw   *bufio.Writer
	wmu  sync.Mutex // one writer at a time: the reader answers SETTINGS
	hbuf bytes.Buffer
	enc  *hpack.Encoder
}

func dialRaw(t *testing.T, sock string) *rawH2 {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	// Nothing a test does on the connection may hang the test.
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	r := &rawH2{conn: c, bw: bufio.NewWriterSize(c, 64<<10)}
	r.fr = http2.NewFramer(r.bw, c)
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	r.enc = hpack.NewEncoder(&r.hbuf)
	err = r.write(func(fr *http2.Framer) error {
		if _, err := io.WriteString(r.bw, http2.ClientPreface); err != nil {
			return err
		}
		return fr.WriteSettings()
	})
	if err != nil {
		t.Fatalf("client preface: %v", err)
	}
	return r
}

// write runs f on the framer and sends what it wrote.
func (r *rawH2) write(f func(fr *http2.Framer) error) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if err := f(r.fr); err != nil {
		return err
	}
	return r.bw.Flush()
}

// block encodes fields with the connection's HPACK encoder, whose dynamic
// table follows the server's decoder.
func (r *rawH2) block(fields ...hpack.HeaderField) []byte {
	r.hbuf.Reset()
	for _, f := range fields {
		if err := r.enc.WriteField(f); err != nil {
			panic(err) // a bytes.Buffer does not fail
		}
	}
	return bytes.Clone(r.hbuf.Bytes())
}

// headers sends a header block that fits one frame.
func (r *rawH2) headers(stream uint32, block []byte, endStream bool) error {
	return r.write(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: block, EndHeaders: true, EndStream: endStream})
	})
}

// headerFrames writes block as a HEADERS frame and as many CONTINUATION
// frames as the default SETTINGS_MAX_FRAME_SIZE needs.
func headerFrames(fr *http2.Framer, stream uint32, block []byte, endStream bool) error {
	const frag = 16 << 10
	first := block[:min(frag, len(block))]
	rest := block[len(first):]
	err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: first, EndHeaders: len(rest) == 0, EndStream: endStream})
	for err == nil && len(rest) > 0 {
		n := min(frag, len(rest))
		err = fr.WriteContinuation(stream, n == len(rest), rest[:n])
		rest = rest[n:]
	}
	return err
}

// data sends one gRPC message and ends the stream's request.
func (r *rawH2) data(stream uint32, msg []byte) error {
	return r.write(func(fr *http2.Framer) error { return fr.WriteData(stream, true, msg) })
}

func requestFields(path string, extra ...hpack.HeaderField) []hpack.HeaderField {
	return append([]hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: path},
		{Name: ":authority", Value: "pullguard"}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	}, extra...)
}

// grpcMessage is m as one length-prefixed gRPC message.
func grpcMessage(m proto.Message) []byte {
	body, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(body))), body...)
}

// streamEnd is a stream the server ended with trailers.
type streamEnd struct {
	stream          uint32
	status, message string
}

// rawOutcome is what the server did on a raw connection.
type rawOutcome struct {
	settings bool // the server's SETTINGS arrived
	ends     []streamEnd
	resets   map[uint32]http2.ErrCode
	goAway   bool
	closed   bool // the server ended the connection
	timedOut bool
	err      error
}

// answered reports whether the server ended stream with trailers for which
// match is true.
func (o *rawOutcome) answered(stream uint32, match func(streamEnd) bool) bool {
	return slices.ContainsFunc(o.ends, func(e streamEnd) bool { return e.stream == stream && match(e) })
}

func (o *rawOutcome) String() string {
	return fmt.Sprintf("ends %v, resets %v, goaway %v, closed %v, timed out %v (%v)", o.ends, o.resets, o.goAway, o.closed, o.timedOut, o.err)
}

// readUntil reads the server's frames until done says so, the server ends
// the connection, or within passes.
func (r *rawH2) readUntil(within time.Duration, done func(*rawOutcome) bool) *rawOutcome {
	o := &rawOutcome{resets: map[uint32]http2.ErrCode{}}
	_ = r.conn.SetReadDeadline(time.Now().Add(within))
	for !done(o) {
		f, err := r.fr.ReadFrame()
		if err != nil {
			o.err = err
			o.timedOut = errors.Is(err, os.ErrDeadlineExceeded)
			o.closed = !o.timedOut
			return o
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				o.settings = true
				_ = r.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = r.write(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
			}
		case *http2.MetaHeadersFrame:
			if f.StreamEnded() {
				e := streamEnd{stream: f.StreamID}
				for _, hf := range f.RegularFields() {
					switch hf.Name {
					case "grpc-status":
						e.status = hf.Value
					case "grpc-message":
						e.message = hf.Value
					}
				}
				o.ends = append(o.ends, e)
			}
		case *http2.RSTStreamFrame:
			o.resets[f.StreamID] = f.ErrCode
		case *http2.GoAwayFrame:
			o.goAway = true
		}
	}
	return o
}

// isDenial matches the attack gate's denial.
func isDenial(e streamEnd) bool { return e.status == "2" && e.message == denialMessage }

// isOK matches a call that succeeded.
func isOK(e streamEnd) bool { return e.status == "0" }

// denySmuggled is a Gate for the attacks: it denies the smuggled image and
// admits anything else, recording both.
func denySmuggled() *recordingGate {
	return &recordingGate{decide: func(_ context.Context, req *runtimeapi.PullImageRequest) (*PullPlan, error) {
		if req.GetImage().GetImage() == smuggledImage {
			return nil, status.Error(codes.Unknown, denialMessage)
		}
		return nil, nil
	}}
}

// probe is a well-behaved client on its own connection calling ImageFsInfo
// over and over, to show pullguard stays responsive during an attack.
type probe struct {
	stop  chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	calls int
	worst time.Duration
	err   error
}

func startProbe(t *testing.T, h *harness) *probe {
	t.Helper()
	img := h.imageClient(t)
	// Connected and served before the attack starts.
	if err := callWithin(img, answerWithin); err != nil {
		t.Fatalf("probe before the attack: %v", err)
	}
	// The call above reached the upstream too: it is counted, so that
	// callCount bounds what the upstream saw from the probe.
	p := &probe{calls: 1, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			start := time.Now()
			err := callWithin(img, answerWithin)
			p.mu.Lock()
			p.calls++
			p.worst = max(p.worst, time.Since(start))
			if err != nil && p.err == nil {
				p.err = err
			}
			p.mu.Unlock()
			select {
			case <-p.stop:
				return
			case <-time.After(20 * time.Millisecond): // pacing, not synchronisation
			}
		}
	}()
	return p
}

func (p *probe) callCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls
}

// check stops the probe and fails the test if a call failed or was slow.
// It makes one more call after the attack.
func (p *probe) check(t *testing.T, h *harness) {
	t.Helper()
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		t.Errorf("a well-behaved call during the attack failed: %v", p.err)
	}
	if p.worst > answerWithin {
		t.Errorf("a well-behaved call during the attack took %v", p.worst)
	}
	if err := callWithin(h.imageClient(t), answerWithin); err != nil {
		t.Errorf("a well-behaved call on a new connection after the attack: %v", err)
	}
}

// isProbe matches the calls a probe makes.
func isProbe(method string) bool { return method == imageServicePrefix+"ImageFsInfo" }

func callWithin(img runtimeapi.ImageServiceClient, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, err := img.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	return err
}

// checkNoUndecidedPull fails the test if containerd received a pull the
// Gate did not admit: every pull upstream must be one the Gate was asked
// about and admitted, and the smuggled image never.
func checkNoUndecidedPull(t *testing.T, h *harness, gate *recordingGate) {
	t.Helper()
	pulls := h.upstream.recordedPulls()
	_, _, admitted := gate.asked()
	if len(pulls) > admitted {
		t.Errorf("containerd received %d pulls, the Gate admitted %d", len(pulls), admitted)
	}
	for _, p := range pulls {
		if p.GetImage().GetImage() == smuggledImage {
			t.Errorf("containerd received the denied pull of %s", smuggledImage)
		}
	}
}

// repeatedReference is n references to f, which the connection's dynamic
// table holds: the encoder's representation of it (one byte), n times.
func repeatedReference(r *rawH2, f hpack.HeaderField, n int) []byte {
	ref := r.block(f)
	if len(ref) != 1 {
		panic(fmt.Sprintf("%s is not in the dynamic table: encoded in %d bytes", f.Name, len(ref)))
	}
	return bytes.Repeat(ref, n)
}

// memUse is heap use after a collection, and all bytes allocated so far.
func memUse() (heap, total uint64) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.TotalAlloc
}

// Stream-ID reuse. The old tunnel took a second header block on a stream id
// it had already seen for trailers and passed it on unguarded, while
// containerd's gRPC, having rejected the first block (an unknown
// pseudo-header), read the second as a new call: a PullImage nobody decided.
// Now every stream containerd sees is one pullguard opened for a call it
// decided: whatever grpc-go makes of a reused id (a new stream after a
// rejected block, or a connection error), the pull is decided or refused.
func TestAttackStreamIDReuse(t *testing.T) {
	pull := func(r *rawH2) error {
		if err := r.headers(1, r.block(requestFields(methodPullImage)...), false); err != nil {
			return err
		}
		return r.data(1, grpcMessage(pullRequest(smuggledImage)))
	}
	tests := []struct {
		name   string
		before func(r *rawH2) error // what the client does on stream 1 before the pull
	}{
		{"unknown pseudo-header rejected", func(r *rawH2) error {
			return r.headers(1, r.block(append([]hpack.HeaderField{{Name: ":smuggle", Value: "1"}}, requestFields(methodPullImage)...)...), false)
		}},
		{"duplicate :path rejected", func(r *rawH2) error {
			fields := requestFields(imageServicePrefix + "ImageFsInfo")
			fields = slices.Insert(fields, 3, hpack.HeaderField{Name: ":path", Value: methodPullImage})
			return r.headers(1, r.block(fields...), false)
		}},
		{"connection header rejected", func(r *rawH2) error {
			return r.headers(1, r.block(requestFields(methodPullImage, hpack.HeaderField{Name: "connection", Value: "close"})...), false)
		}},
		{"reset by the client", func(r *rawH2) error {
			if err := r.headers(1, r.block(requestFields(methodPullImage)...), false); err != nil {
				return err
			}
			return r.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(1, http2.ErrCodeCancel) })
		}},
		{"answered runtime call", func(r *rawH2) error {
			if err := r.headers(1, r.block(requestFields(runtimeServicePrefix+"Version")...), false); err != nil {
				return err
			}
			return r.data(1, grpcMessage(&runtimeapi.VersionRequest{}))
		}},
		{"still open", func(r *rawH2) error {
			return r.headers(1, r.block(requestFields(runtimeServicePrefix+"Version")...), false)
		}},
		{"after a higher stream", func(r *rawH2) error {
			if err := r.headers(3, r.block(requestFields(runtimeServicePrefix+"Version")...), false); err != nil {
				return err
			}
			return r.data(3, grpcMessage(&runtimeapi.VersionRequest{}))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			gate := denySmuggled()
			h := newHarness(t, gate, 0)
			p := startProbe(t, h)
			r := dialRaw(t, h.sock)
			if err := tc.before(r); err != nil {
				t.Fatalf("first use of stream 1: %v", err)
			}
			// The server may already have ended the connection.
			_ = pull(r)
			out := r.readUntil(answerWithin, func(o *rawOutcome) bool { return o.answered(1, isDenial) })
			t.Logf("outcome: %v", out)
			if out.timedOut {
				t.Errorf("the reused stream was neither decided nor refused within %v: %v", answerWithin, out)
			}
			if asked, _, _ := gate.asked(); out.answered(1, isDenial) != (len(asked) > 0) {
				t.Errorf("the Gate was asked %d times, the client saw its denial: %v", len(asked), out.answered(1, isDenial))
			}
			checkNoUndecidedPull(t, h, gate)
			if m := slices.DeleteFunc(h.upstream.methods(), isProbe); len(m) != 0 {
				t.Errorf("containerd saw %v", m)
			}
			p.check(t, h)
		})
	}
}

// Duplicate and chained grpc-timeout headers. The old tunnel decided under
// the shortest of the values (each one shortened its context) while
// containerd's gRPC kept the last: with 1n then 99999999S the decision ran
// out of time at once, where a fail_open rule admits, and containerd pulled
// with years to spare. Now grpc-go parses the headers once and that one
// deadline is the Gate's and containerd's: a pull whose decision ran out of
// time is never made, even by a Gate that admits on an expired deadline.
func TestAttackDuplicateTimeouts(t *testing.T) {
	chains := [][]string{
		{"1n", "99999999S"},
		{"99999999S", "1n"},
		{"1n", "1n", "1n", "1n", "99999999S"},
		{"5S", "1H", "1n", "99999999S", "10S"},
		{"99999999S", "bogus"},
		{"bogus", "99999999S"},
		{"999999999S", "1n"}, // nine digits: malformed
	}
	gates := []struct {
		name string
		// admitExpired is whether the Gate admits when the caller's
		// deadline has passed, as a fail_open rule whose registry call
		// ran out of time would.
		admitExpired bool
	}{{"strict", false}, {"fail-open", true}}
	var made, refused int
	for _, g := range gates {
		for _, chain := range chains {
			t.Run(g.name+"/"+strings.Join(chain, ","), func(t *testing.T) {
				gate := &recordingGate{decide: func(ctx context.Context, _ *runtimeapi.PullImageRequest) (*PullPlan, error) {
					if ctx.Err() != nil && !g.admitExpired {
						return nil, status.Error(codes.DeadlineExceeded, "decision ran out of time")
					}
					return nil, nil
				}}
				h := newHarness(t, gate, 0)
				p := startProbe(t, h)
				r := dialRaw(t, h.sock)
				var extra []hpack.HeaderField
				for _, v := range chain {
					extra = append(extra, hpack.HeaderField{Name: "grpc-timeout", Value: v})
				}
				sent := time.Now()
				if err := r.headers(1, r.block(requestFields(methodPullImage, extra...)...), false); err != nil {
					t.Fatal(err)
				}
				if err := r.data(1, grpcMessage(pullRequest("registry.example/app:v1"))); err != nil {
					t.Fatal(err)
				}
				out := r.readUntil(answerWithin, func(o *rawOutcome) bool { return len(o.ends) > 0 || len(o.resets) > 0 })
				answeredAt := time.Now()
				t.Logf("outcome: %v", out)
				if out.timedOut {
					t.Fatalf("no answer within %v: %v", answerWithin, out)
				}

				_, decisions, _ := gate.asked()
				pulls := h.upstream.callsTo(methodPullImage)
				// The Gate decided under the one deadline grpc-go parsed
				// from the values sent, whichever rule picked it.
				if len(decisions) == 1 && !deadlineFromChain(decisions[0].deadline, chain, sent, answeredAt) {
					t.Errorf("the Gate decided under deadline %v (set %v), none of %v after %v", decisions[0].deadline, decisions[0].hasDeadline, chain, sent)
				}
				if len(decisions) > 1 || len(pulls) > len(decisions) {
					t.Fatalf("%d decisions, %d pulls upstream", len(decisions), len(pulls))
				}
				if len(pulls) == 1 {
					made++
					d := decisions[0]
					if d.expired {
						t.Errorf("containerd pulled although the decision was made after its deadline")
					}
					// containerd's deadline is the Gate's, less the transit
					// (the timeout is sent rounded up).
					up := pulls[0]
					if !up.hasDeadline || up.deadline.After(d.deadline.Add(time.Second)) || up.deadline.Before(d.deadline.Add(-answerWithin)) {
						t.Errorf("containerd's deadline %v (set %v), want the Gate's %v", up.deadline, up.hasDeadline, d.deadline)
					}
					if !out.answered(1, isOK) {
						t.Errorf("the pull was made but the client got %v", out)
					}
				} else {
					refused++
					if out.answered(1, isOK) {
						t.Errorf("the client was told the pull succeeded, containerd never saw it: %v", out)
					}
				}
				p.check(t, h)
			})
		}
	}
	// Both ends must have been exercised for the table to mean anything.
	if made == 0 || refused == 0 {
		t.Errorf("%d pulls made, %d refused: want both among the chains", made, refused)
	}
}

// deadlineFromChain reports whether dl is what one of the grpc-timeout values
// sent between from and to gives.
func deadlineFromChain(dl time.Time, chain []string, from, to time.Time) bool {
	for _, v := range chain {
		d, err := decodeTestTimeout(v)
		if err != nil {
			continue
		}
		if !dl.Before(from.Add(d)) && !dl.After(to.Add(d)) {
			return true
		}
	}
	return false
}

// decodeTestTimeout parses a grpc-timeout value: at most 8 digits and a unit.
func decodeTestTimeout(v string) (time.Duration, error) {
	if len(v) < 2 || len(v) > 9 {
		return 0, fmt.Errorf("bad timeout %q", v)
	}
	units := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}
	unit, ok := units[v[len(v)-1]]
	if !ok {
		return 0, fmt.Errorf("bad unit in %q", v)
	}
	var n int64
	for _, c := range v[:len(v)-1] {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("bad digits in %q", v)
		}
		n = n*10 + int64(c-'0')
	}
	return time.Duration(n) * unit, nil
}

// CONTINUATION flood. The old tunnel walked a header block's frames again
// from its HEADERS frame each time more bytes arrived: a megabyte of
// CONTINUATION frames cost time quadratic in their number, and one indexed
// field repeated thousands of times decoded to far more than the block.
// Now grpc-go's framer decodes each fragment once as it comes and stops at
// MaxHeaderListSize; zero-length fragments cost what reading them costs.
func TestAttackContinuationFlood(t *testing.T) {
	const floodBytes = 1 << 20
	repeated := hpack.HeaderField{Name: "x-repeated", Value: strings.Repeat("r", 100)}
	tests := []struct {
		name string
		// send writes the attack on stream 1.
		send func(r *rawH2, fr *http2.Framer) error
		// wantRefused: the request must be refused (stream reset or
		// connection ended); otherwise it may also be decided.
		wantRefused bool
	}{
		{
			name: "zero-length CONTINUATIONs, then the pull",
			send: func(r *rawH2, fr *http2.Framer) error {
				if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block(requestFields(methodPullImage)...)}); err != nil {
					return err
				}
				for range floodBytes / 9 { // a frame header is 9 bytes
					if err := fr.WriteContinuation(1, false, nil); err != nil {
						return err
					}
				}
				if err := fr.WriteContinuation(1, true, nil); err != nil {
					return err
				}
				return fr.WriteData(1, true, grpcMessage(pullRequest(smuggledImage)))
			},
		},
		{
			name: "one indexed field repeated across CONTINUATIONs",
			send: func(r *rawH2, fr *http2.Framer) error {
				first := r.block(append(requestFields(methodPullImage), repeated)...)
				if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first}); err != nil {
					return err
				}
				frag := repeatedReference(r, repeated, 16<<10)
				for i := range floodBytes / len(frag) {
					if err := fr.WriteContinuation(1, i == floodBytes/len(frag)-1, frag); err != nil {
						return err
					}
				}
				return fr.WriteData(1, true, grpcMessage(pullRequest(smuggledImage)))
			},
			wantRefused: true,
		},
		{
			name: "one indexed field repeated in one HEADERS frame",
			send: func(r *rawH2, fr *http2.Framer) error {
				first := r.block(append(requestFields(methodPullImage), repeated)...)
				block := append(first, repeatedReference(r, repeated, 16<<10-len(first))...)
				if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true}); err != nil {
					return err
				}
				return fr.WriteData(1, true, grpcMessage(pullRequest(smuggledImage)))
			},
			wantRefused: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			gate := denySmuggled()
			h := newHarness(t, gate, 0)
			p := startProbe(t, h)
			r := dialRaw(t, h.sock)
			heap0, total0 := memUse()
			start := time.Now()
			// Written alongside the reads: the server may answer, or end
			// the connection, before the attack is all sent.
			sent := make(chan error, 1)
			go func() { sent <- r.write(func(fr *http2.Framer) error { return tc.send(r, fr) }) }()
			out := r.readUntil(answerWithin, func(o *rawOutcome) bool {
				_, reset := o.resets[1]
				return reset || o.answered(1, func(streamEnd) bool { return true })
			})
			elapsed := time.Since(start)
			_ = r.conn.Close() // ends a write still blocked on a server that stopped reading
			werr := <-sent
			heap1, total1 := memUse()
			t.Logf("outcome after %v: %v; write: %v; heap %+d KiB, allocated %d KiB",
				elapsed, out, werr, (int64(heap1)-int64(heap0))>>10, (total1-total0)>>10)

			if out.timedOut {
				t.Fatalf("the flood was neither refused nor answered within %v: %v", answerWithin, out)
			}
			_, reset := out.resets[1]
			refused := reset || out.closed || out.answered(1, func(e streamEnd) bool { return e.status != "0" && !isDenial(e) })
			if tc.wantRefused && !refused {
				t.Errorf("the oversized header list was not refused: %v", out)
			}
			if !refused && !out.answered(1, isDenial) {
				t.Errorf("the request was neither refused nor decided: %v", out)
			}
			if asked, _, _ := gate.asked(); tc.wantRefused && len(asked) != 0 {
				t.Errorf("the Gate was asked about an oversized request: %v", asked)
			}
			// What a megabyte of frames may cost in memory, whatever it
			// decodes to. Time is bounded by answerWithin above, which a
			// parse quadratic in the frames would far exceed.
			if total1-total0 > 64<<20 {
				t.Errorf("the flood made pullguard allocate %d MiB", (total1-total0)>>20)
			}
			if heap1 > heap0 && heap1-heap0 > 32<<20 {
				t.Errorf("the flood left the heap %d MiB larger", (heap1-heap0)>>20)
			}
			checkNoUndecidedPull(t, h, gate)
			p.check(t, h)
		})
	}
}

// HPACK expansion. A literal of about 4 KB enters the dynamic table once; a
// million one-byte references to it then make a 1 MB header block that
// decodes to 4 GB. The old tunnel decoded it whole. Now the decoder stops
// emitting at MaxHeaderListSize, and grpc-go's framer ends the connection at
// the next fragment; memory stays flat and the other clients are served.
func TestAttackHPACKExpansion(t *testing.T) {
	const references = 1_000_000
	big := hpack.HeaderField{Name: "x-big", Value: strings.Repeat("b", 4096-32-len("x-big"))}
	gate := denySmuggled()
	h := newHarness(t, gate, 0)
	p := startProbe(t, h)
	r := dialRaw(t, h.sock)

	block := r.block(append(requestFields(methodPullImage), big)...)
	block = append(block, repeatedReference(r, big, references)...)
	heap0, total0 := memUse()
	start := time.Now()
	sent := make(chan error, 1)
	go func() {
		sent <- r.write(func(fr *http2.Framer) error {
			if err := headerFrames(fr, 1, block, false); err != nil {
				return err
			}
			return fr.WriteData(1, true, grpcMessage(pullRequest(smuggledImage)))
		})
	}()
	out := r.readUntil(answerWithin, func(o *rawOutcome) bool {
		_, reset := o.resets[1]
		return reset || o.answered(1, func(streamEnd) bool { return true })
	})
	elapsed := time.Since(start)
	_ = r.conn.Close()
	werr := <-sent
	heap1, total1 := memUse()
	t.Logf("outcome after %v: %v; write: %v; heap %+d KiB, allocated %d KiB",
		elapsed, out, werr, (int64(heap1)-int64(heap0))>>10, (total1-total0)>>10)

	_, reset := out.resets[1]
	if out.timedOut || !(out.closed || reset) {
		t.Errorf("a header list of 4 GB was not refused within %v: %v", answerWithin, out)
	}
	if out.answered(1, func(streamEnd) bool { return true }) {
		t.Errorf("a header list of 4 GB was answered as a call: %v", out)
	}
	if total1-total0 > 64<<20 {
		t.Errorf("decoding the block allocated %d MiB", (total1-total0)>>20)
	}
	if heap1 > heap0 && heap1-heap0 > 32<<20 {
		t.Errorf("the heap grew by %d MiB", (heap1-heap0)>>20)
	}
	if asked, _, _ := gate.asked(); len(asked) != 0 {
		t.Errorf("the Gate was asked: %v", asked)
	}
	checkNoUndecidedPull(t, h, gate)
	p.check(t, h)
}

// The header list bound itself. CRI calls carry a handful of short
// headers; a list over maxHeaderListBytes is refused before any handler
// runs, however it is encoded, and one under it is served with its
// metadata.
func TestHeaderListBound(t *testing.T) {
	h := newHarness(t, nil, 0)
	pad := func(i int) hpack.HeaderField {
		return hpack.HeaderField{Name: fmt.Sprintf("x-pad-%03d", i), Value: strings.Repeat("p", 1000)}
	}
	listSize := func(fields []hpack.HeaderField) int {
		n := 0
		for _, f := range fields {
			n += int(f.Size())
		}
		return n
	}
	under := requestFields(imageServicePrefix + "ImageFsInfo")
	for i := 0; listSize(under)+int(pad(i).Size()) <= maxHeaderListBytes; i++ {
		under = append(under, pad(i))
	}
	over := append(slices.Clone(under), pad(len(under)))
	for _, tc := range []struct {
		name   string
		fields []hpack.HeaderField
		served bool
	}{{"just under", under, true}, {"just over", over, false}} {
		t.Run(tc.name, func(t *testing.T) {
			if got := listSize(tc.fields) <= maxHeaderListBytes; got != tc.served {
				t.Fatalf("test fields are %d bytes, on the wrong side of %d", listSize(tc.fields), maxHeaderListBytes)
			}
			before := len(h.upstream.callsTo(imageServicePrefix + "ImageFsInfo"))
			r := dialRaw(t, h.sock)
			block := r.block(tc.fields...)
			if err := r.write(func(fr *http2.Framer) error { return headerFrames(fr, 1, block, false) }); err != nil {
				t.Fatal(err)
			}
			_ = r.data(1, grpcMessage(&runtimeapi.ImageFsInfoRequest{})) // the server may have ended the connection
			out := r.readUntil(answerWithin, func(o *rawOutcome) bool {
				_, reset := o.resets[1]
				return reset || o.answered(1, func(streamEnd) bool { return true })
			})
			if out.timedOut {
				t.Fatalf("no answer: %v", out)
			}
			calls := h.upstream.callsTo(imageServicePrefix + "ImageFsInfo")[before:]
			if tc.served {
				if !out.answered(1, isOK) || len(calls) != 1 || len(calls[0].md.Get("x-pad-000")) != 1 {
					t.Errorf("a %d-byte header list: %v, upstream saw %d calls; want it served with its metadata", listSize(tc.fields), out, len(calls))
				}
				return
			}
			if out.answered(1, func(streamEnd) bool { return true }) || len(calls) != 0 {
				t.Errorf("a %d-byte header list was served: %v, upstream saw %d calls", listSize(tc.fields), out, len(calls))
			}
		})
	}
}

// Many streams on one connection. Each call in flight holds a handler and a
// call to containerd: without MaxStreams one connection could open as many
// as it liked. Streams over the bound are refused at once and never reach
// containerd; the calls in flight are unaffected.
func TestAttackManyStreams(t *testing.T) {
	const streams = 4
	h := newHarnessWith(t, Options{MaxStreams: streams}, 0)
	p := startProbe(t, h)
	r := dialRaw(t, h.sock)
	// The server's SETTINGS (with its stream bound) is read before any
	// stream is opened, as a client would.
	if out := r.readUntil(answerWithin, func(o *rawOutcome) bool { return o.settings }); !out.settings {
		t.Fatalf("no SETTINGS: %v", out)
	}
	const opened = 3 * streams
	for i := range opened {
		id := uint32(2*i + 1)
		if err := r.headers(id, r.block(requestFields(imageServicePrefix+"ImageFsInfo", hpack.HeaderField{Name: holdKey, Value: "1"})...), false); err != nil {
			t.Fatal(err)
		}
		if err := r.data(id, grpcMessage(&runtimeapi.ImageFsInfoRequest{})); err != nil {
			t.Fatal(err)
		}
	}
	out := r.readUntil(answerWithin, func(o *rawOutcome) bool { return len(o.resets) == opened-streams })
	if out.timedOut || out.closed {
		t.Fatalf("streams over the bound not refused: %v", out)
	}
	for id, code := range out.resets {
		if code != http2.ErrCodeRefusedStream {
			t.Errorf("stream %d reset with %v, want REFUSED_STREAM", id, code)
		}
	}
	for range streams {
		waitFor(t, h.upstream.entered, "a call in flight at the upstream")
	}
	close(h.upstream.release)
	out = r.readUntil(answerWithin, func(o *rawOutcome) bool { return len(o.ends) == streams })
	if len(out.ends) != streams || slices.ContainsFunc(out.ends, func(e streamEnd) bool { return !isOK(e) }) {
		t.Errorf("calls in flight: %v, want %d answered", out, streams)
	}
	// The probe makes one call at a time: at most one of its calls is at
	// the upstream and not counted yet.
	if n := len(h.upstream.callsTo(imageServicePrefix + "ImageFsInfo")); n > p.callCount()+streams+1 {
		t.Errorf("upstream saw %d ImageFsInfo calls: more than the %d in flight and the probe's", n, streams)
	}
	p.check(t, h)
}

// Ping flood. A client may ping to keep its connection alive, but answering
// pings as fast as they come costs the server writes: more often than
// keepaliveMinTime, the connection is told to go away.
func TestAttackPingFlood(t *testing.T) {
	h := newHarness(t, nil, 0)
	p := startProbe(t, h)
	r := dialRaw(t, h.sock)
	start := time.Now()
	err := r.write(func(fr *http2.Framer) error {
		for i := range 1000 {
			if err := fr.WritePing(false, [8]byte{byte(i >> 8), byte(i)}); err != nil {
				return err
			}
		}
		return nil
	})
	out := r.readUntil(answerWithin, func(o *rawOutcome) bool { return o.goAway })
	t.Logf("outcome after %v: %v; write: %v", time.Since(start), out, err)
	if !out.goAway && !out.closed {
		t.Errorf("a ping flood was answered for %v: %v", answerWithin, out)
	}
	p.check(t, h)
}

// Many connections. Every accepted connection costs goroutines and buffers:
// without MaxConnections, a client opening connections that never send a
// byte would have pullguard hold them all; without the handshake timeout,
// MaxConnections such connections would lock kubelet out for good. Now at most
// MaxConnections are accepted at once, the others wait in the listen
// backlog, and one that does not complete HTTP/2's preface in time is
// closed, letting the next one in.
func TestAttackManyIdleConnections(t *testing.T) {
	const (
		limit     = 8
		silent    = 40
		handshake = 300 * time.Millisecond
	)
	h := newHarnessWith(t, Options{MaxConnections: limit, HandshakeTimeout: handshake}, 0)
	baseline := runtime.NumGoroutine()

	type life struct {
		dialled, accepted, closed time.Time
		err                       error
	}
	lives := make([]life, silent)
	var wg sync.WaitGroup
	for i := range silent {
		lives[i].dialled = time.Now()
		c, err := net.Dial("unix", h.sock)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			_ = c.SetReadDeadline(time.Now().Add(time.Minute))
			// The server speaks first (its SETTINGS) once it accepted.
			if _, err := c.Read(make([]byte, 1)); err != nil {
				lives[i].err = fmt.Errorf("never accepted: %w", err)
				return
			}
			lives[i].accepted = time.Now()
			if _, err := io.Copy(io.Discard, c); err != nil {
				lives[i].err = fmt.Errorf("not closed by the server: %w", err)
			}
			lives[i].closed = time.Now()
		}()
	}
	// A well-behaved client dialling after them is served once the silent
	// ones ahead of it are cut.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := h.imageClient(t).ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{}); err != nil {
		t.Errorf("a well-behaved client behind %d silent connections: %v", silent, err)
	}
	wg.Wait()

	type event struct {
		at    time.Time
		delta int
	}
	var events []event
	for i, l := range lives {
		if l.err != nil {
			t.Errorf("silent connection %d: %v", i, l.err)
			continue
		}
		// Cut by the handshake timeout: not before it (counted from the
		// dial, which comes before the accept), not much after it.
		if d := l.closed.Sub(l.dialled); d < handshake {
			t.Errorf("silent connection %d closed %v after it was dialled, before the %v timeout", i, d, handshake)
		}
		if held := l.closed.Sub(l.accepted); held > handshake+answerWithin {
			t.Errorf("silent connection %d held for %v, want about %v", i, held, handshake)
		}
		events = append(events, event{l.accepted, 1}, event{l.closed, -1})
	}
	// How many silent connections the server held at once. The ends are
	// seen by separate goroutines, which a busy machine schedules late, so
	// the next accept may be seen before the close that let it in: allow up
	// to twice the limit (without one, all of them are held at once).
	slices.SortFunc(events, func(a, b event) int { return a.at.Compare(b.at) })
	open, most := 0, 0
	for _, e := range events {
		open += e.delta
		most = max(most, open)
	}
	if most > 2*limit {
		t.Errorf("%d silent connections held at once, want at most about %d", most, limit)
	}
	eventually(t, 10*time.Second, "goroutines back to what they were", func() error {
		if n := runtime.NumGoroutine(); n > baseline+20 {
			return fmt.Errorf("%d goroutines, %d before the connections", n, baseline)
		}
		return nil
	})
}

// Method spellings. The old tunnel once let a :path without its leading '/'
// through unguarded, though a gRPC server may route it all the same.
// Now pullguard makes every call to containerd itself: a spelling it does not
// take for PullImage reaches containerd only under a name that is not
// PullImage there either.
func TestAttackPullPathSpellings(t *testing.T) {
	gate := denySmuggled()
	h := newHarness(t, gate, 0)
	r := dialRaw(t, h.sock)
	paths := []string{
		strings.TrimPrefix(methodPullImage, "/"),
		"/runtime.v1.ImageService//PullImage",
		methodPullImage + "/",
		"//runtime.v1.ImageService/PullImage",
		"/runtime.v1.ImageService/./PullImage",
		"/runtime.v1.ImageService/pullimage",
		"/runtime.v1.ImageService/PullImage?x=1",
		"/runtime.v1.ImageService/%50ullImage",
		"/runtime.v1.ImageService/PullImage ",
	}
	for i, path := range paths {
		stream := uint32(2*i + 1)
		if err := r.headers(stream, r.block(requestFields(path)...), false); err != nil {
			t.Fatal(err)
		}
		if err := r.data(stream, grpcMessage(pullRequest(smuggledImage))); err != nil {
			t.Fatal(err)
		}
		out := r.readUntil(answerWithin, func(o *rawOutcome) bool {
			_, reset := o.resets[stream]
			return reset || o.answered(stream, func(streamEnd) bool { return true })
		})
		if out.timedOut || out.closed {
			t.Fatalf("%q: no answer: %v", path, out)
		}
		if out.answered(stream, isOK) {
			t.Errorf("%q: answered as a successful call: %v", path, out)
		}
	}
	checkNoUndecidedPull(t, h, gate)
	if pulls := h.upstream.recordedPulls(); len(pulls) != 0 {
		t.Errorf("containerd's PullImage ran %d times", len(pulls))
	}
}
