package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
)

// A tunnel carries one client connection (kubelet's, crictl's) to its own
// connection to containerd, HTTP/2 frame by frame. Both ends speak to each
// other: settings, flow control, pings and HPACK state are theirs, and the
// frames of a pass-through call are copied without being decoded. The tunnel
// reads every header block the client sends (to learn each call's method and
// keep its HPACK decoder in step with containerd's) and steps into the two
// calls it guards, PullImage and CreateContainer:
//
//   - their headers go to containerd at once (HPACK blocks must keep their
//     order), their message too except the frame that completes it, so that
//     containerd cannot act before the Gate has decided;
//   - admitted as asked, the held frames follow and containerd answers the
//     call itself;
//   - denied, or carried out differently (a pull pinned to a digest), the
//     call is reset towards containerd and the tunnel answers the client with
//     frames of its own: header fields written as HPACK literals that never
//     touch the dynamic table, and flow-control credit settled so that both
//     ends keep agreeing on their windows.
type tunnel struct {
	s        *Server
	client   net.Conn
	upstream net.Conn

	cmu sync.Mutex // serialises writes to client
	umu sync.Mutex // serialises writes to upstream

	mu         sync.Mutex
	streams    map[uint32]streamKind // open client streams
	calls      map[uint32]*call      // the guarded calls among them
	lastStream uint32                // highest stream the client opened
	draining   bool                  // GOAWAY sent: no new streams
	closeIdle  bool                  // close once streams is empty
	// starts are the guarded calls whose message is complete, to be
	// decided once the frames before their last one are written (only the
	// fromClient goroutine touches it).
	starts []*call
	// debt is conn-level window credit the client will return for DATA the
	// tunnel wrote itself; it is kept back from containerd, which never
	// spent it.
	debt uint64

	upTableSize atomic.Uint32 // containerd's SETTINGS_HEADER_TABLE_SIZE
	upMaxFrame  atomic.Uint32 // containerd's SETTINGS_MAX_FRAME_SIZE
	clMaxFrame  atomic.Uint32 // the client's SETTINGS_MAX_FRAME_SIZE

	ctx       context.Context // ends when the tunnel closes
	cancel    context.CancelFunc
	closeOnce sync.Once
	done      chan struct{}
}

// streamKind says what a stream's end means beyond freeing it.
type streamKind uint8

const (
	streamPlain streamKind = iota
	// streamImagesChange is a PullImage or RemoveImage: when it ends, what
	// the Gate knows about images on the node may be stale.
	streamImagesChange
)

func newTunnel(s *Server, client, upstream net.Conn) *tunnel {
	t := &tunnel{
		s:        s,
		client:   client,
		upstream: upstream,
		streams:  make(map[uint32]streamKind),
		calls:    make(map[uint32]*call),
		done:     make(chan struct{}),
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.upTableSize.Store(defaultHeaderTableSize)
	t.upMaxFrame.Store(defaultMaxFrameSize)
	t.clMaxFrame.Store(defaultMaxFrameSize)
	return t
}

// run carries the connection until either side closes it.
func (t *tunnel) run() {
	defer t.close()
	go func() {
		defer t.close()
		if err := t.fromUpstream(); err != nil && !t.closing() {
			t.s.log.Debug("CRI connection: upstream side ended", "err", err)
			t.s.observe("", codes.Unavailable)
		}
	}()
	// fromClient only returns on an error: EOF is the client hanging up.
	if err := t.fromClient(); !t.closing() && !errors.Is(err, io.EOF) {
		t.s.log.Debug("CRI connection: client side ended", "err", err)
	}
}

func (t *tunnel) closing() bool { return t.ctx.Err() != nil }

// close ends the tunnel: both connections, and every guarded call still
// being decided.
func (t *tunnel) close() {
	t.closeOnce.Do(func() {
		t.cancel()
		_ = t.client.Close()
		_ = t.upstream.Close()
		close(t.done)
	})
}

func (t *tunnel) writeClient(b []byte) error {
	t.cmu.Lock()
	defer t.cmu.Unlock()
	_, err := t.client.Write(b)
	return err
}

func (t *tunnel) writeUpstream(b []byte) error {
	t.umu.Lock()
	defer t.umu.Unlock()
	_, err := t.upstream.Write(b)
	return err
}

// drain sends the client a GOAWAY naming the last stream it opened: no new
// calls start, the open ones finish, then the tunnel closes.
func (t *tunnel) drain() {
	t.mu.Lock()
	if t.draining {
		t.mu.Unlock()
		return
	}
	t.draining = true
	last := t.lastStream
	idle := len(t.streams) == 0
	t.closeIdle = true
	t.mu.Unlock()
	_ = t.writeClient(appendGoAway(nil, last, errCodeNo))
	if idle {
		t.close()
	}
}

// fromClient copies the client's frames to containerd, stepping into the
// guarded calls.
func (t *tunnel) fromClient() error {
	pre := make([]byte, len(clientPreface))
	if _, err := io.ReadFull(t.client, pre); err != nil {
		return fmt.Errorf("read client preface: %w", err)
	}
	if string(pre) != clientPreface {
		return errors.New("client did not open with the HTTP/2 preface: not a gRPC client")
	}
	if err := t.writeUpstream(pre); err != nil {
		return fmt.Errorf("write preface upstream: %w", err)
	}
	dec := hpack.NewDecoder(defaultHeaderTableSize, nil)
	dec.SetMaxStringLength(maxHeaderBlock)
	tableSize := uint32(defaultHeaderTableSize)
	fb := newFrameBuf(t.client)
	for {
		if err := fb.fill(); err != nil {
			return err
		}
		w := 0
		for {
			unit, h, ok, err := fb.next(t.upMaxFrame.Load())
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			if ts := min(t.upTableSize.Load(), maxHeaderTableSize); ts != tableSize {
				tableSize = max(tableSize, ts)
				dec.SetAllowedMaxDynamicTableSize(tableSize)
			}
			forward, err := t.clientUnit(dec, unit, h)
			if err != nil {
				return err
			}
			if forward {
				w = fb.keep(w, unit)
			}
		}
		if len(t.starts) == 1 {
			if err := t.decideInBatch(t.starts[0], fb.buf[:w]); err != nil {
				return fmt.Errorf("write upstream: %w", err)
			}
		} else {
			if w > 0 {
				if err := t.writeUpstream(fb.buf[:w]); err != nil {
					return fmt.Errorf("write upstream: %w", err)
				}
			}
			// Only now: a decision may write the held frames or a
			// reset, which must not overtake the call's headers in
			// this batch.
			for _, c := range t.starts {
				go c.decide()
			}
		}
		clear(t.starts)
		t.starts = t.starts[:0]
	}
}

// quickDecision is how long a batch holding a call's complete message waits
// for the call's decision before going to containerd without it.
const quickDecision = time.Millisecond

// decideInBatch gives the call whose message completed in this batch a short
// time to be decided before the batch goes to containerd. Decided from
// cached facts (tens of µs), an admitted call then reaches containerd whole,
// in one write, rather than its headers now and its last frame after the
// decision: two wake-ups of containerd's reader instead of one cost ~0.4 ms
// per create on a small VM. A slower decision carries on after the batch is
// written, as any other; the other calls on the connection wait at most
// quickDecision.
func (t *tunnel) decideInBatch(c *call, batch []byte) error {
	wait := make(chan struct{})
	t.mu.Lock()
	c.inBatch, c.batchWait = true, wait
	t.mu.Unlock()
	go c.decide()
	timer := time.NewTimer(quickDecision)
	select {
	case <-wait:
	case <-timer.C:
	}
	timer.Stop()

	t.mu.Lock()
	defer t.mu.Unlock()
	var bufs net.Buffers
	if len(batch) > 0 {
		bufs = append(bufs, batch)
	}
	if c.batchForward {
		bufs = append(bufs, c.held...)
		c.held = nil
	}
	if c.batchReset {
		bufs = append(bufs, appendRSTStream(nil, c.stream, errCodeCancel))
	}
	c.inBatch, c.batchWait, c.batchForward, c.batchReset = false, nil, false, false
	if len(bufs) == 0 {
		return nil
	}
	// Under t.mu, like forward: nothing of this call's may overtake it.
	t.umu.Lock()
	defer t.umu.Unlock()
	_, err := bufs.WriteTo(t.upstream)
	return err
}

// clientUnit handles one unit from the client and says whether it goes on
// to containerd as it is.
func (t *tunnel) clientUnit(dec *hpack.Decoder, unit []byte, h frameHeader) (bool, error) {
	switch h.typ {
	case frameHeaders:
		return t.clientHeaders(dec, unit, h)
	case frameData:
		return t.clientData(unit, h)
	case frameRSTStream:
		return t.clientReset(h.stream), nil
	case frameWindowUpdate:
		if h.stream != 0 || h.length != 4 {
			return true, nil
		}
		return t.settleWindowUpdate(unit), nil
	case framePing:
		if h.has(flagAck) || h.length != 8 {
			return true, nil // the answer to a ping of containerd's
		}
		// The tunnel answers the client's pings itself. containerd counts
		// pings that arrive while it has sent nothing as abuse
		// (too_many_pings, then GOAWAY), and the client's BDP pings follow
		// data it received, which for calls the tunnel answers came from
		// the tunnel, not from containerd.
		ack := appendFrameHeader(nil, 8, framePing, flagAck, 0)
		return false, t.writeClient(append(ack, unit[frameHeaderLen:]...))
	case frameSettings:
		if !h.has(flagAck) {
			settingsEach(unit[frameHeaderLen:], func(id uint16, v uint32) {
				if id == settingMaxFrameSize && validMaxFrameSize(v) {
					t.clMaxFrame.Store(v)
				}
			})
		}
	}
	return true, nil
}

// clientHeaders decodes a header block (every block must be decoded, to keep
// the decoder's table in step) and opens the stream it starts.
func (t *tunnel) clientHeaders(dec *hpack.Decoder, unit []byte, h frameHeader) (bool, error) {
	block, err := headerBlock(unit)
	if err != nil {
		return false, err
	}
	fields, err := dec.DecodeFull(block)
	if err != nil {
		return false, fmt.Errorf("decode client header block: %w", err)
	}
	t.mu.Lock()
	if h.stream <= t.lastStream {
		t.mu.Unlock()
		return true, nil // trailers of an open stream; gRPC clients send none
	}
	if t.draining {
		// After GOAWAY the client retries on a new connection: this
		// stream must not also run here.
		t.mu.Unlock()
		return false, nil
	}
	var path string
	paths := 0
	for _, f := range fields {
		if f.Name == ":path" {
			path = routedMethod(f.Value)
			paths++
		}
	}
	if paths != 1 {
		// Which one containerd would act on is not ours to guess.
		t.mu.Unlock()
		return false, fmt.Errorf("request with %d :path headers", paths)
	}
	t.lastStream = h.stream
	kind := streamPlain
	if path == methodPullImage || path == methodRemoveImage {
		kind = streamImagesChange
	}
	t.streams[h.stream] = kind
	var c *call
	if path == methodPullImage || path == methodCreateContainer {
		if g := t.s.currentGate(); g != nil {
			c = newCall(t, h.stream, path, fields, g)
			t.calls[h.stream] = c
		}
	}
	t.mu.Unlock()
	if c != nil && h.has(flagEndStream) {
		// A guarded call with no message: containerd must not see its
		// end before the Gate has (it will be refused as malformed).
		unit[4] &^= flagEndStream
		t.mu.Lock()
		c.state = callDeciding
		t.mu.Unlock()
		t.starts = append(t.starts, c)
	}
	return true, nil
}

// routedMethod is the method a gRPC server may route a :path to, written the
// canonical way ("/service/method"). grpc-go's router strips one leading '/'
// if there is one; its transport refuses a path without one today
// (Unimplemented), but whether "runtime.v1.RuntimeService/CreateContainer"
// reaches CreateContainer must not depend on the version containerd is built
// with: it is guarded as CreateContainer.
func routedMethod(path string) string {
	return "/" + strings.TrimPrefix(path, "/")
}

// headerBlock joins the fragments of a HEADERS unit.
func headerBlock(unit []byte) ([]byte, error) {
	h := parseFrameHeader(unit)
	first, err := fragmentOf(h, unit[frameHeaderLen:frameHeaderLen+h.length])
	if err != nil {
		return nil, err
	}
	rest := unit[frameHeaderLen+h.length:]
	if len(rest) == 0 {
		return first, nil
	}
	block := append([]byte(nil), first...)
	for len(rest) > 0 {
		ch := parseFrameHeader(rest)
		block = append(block, rest[frameHeaderLen:frameHeaderLen+ch.length]...)
		rest = rest[frameHeaderLen+ch.length:]
	}
	return block, nil
}

// clientData passes DATA on, except on a guarded call being decided.
func (t *tunnel) clientData(unit []byte, h frameHeader) (bool, error) {
	t.mu.Lock()
	c := t.calls[h.stream]
	if c == nil {
		dropped := t.draining && h.stream > t.lastStream
		t.mu.Unlock()
		return !dropped, nil
	}
	switch c.state {
	case callForwarded:
		t.mu.Unlock()
		return true, nil
	case callAnswered:
		// containerd will never see these bytes: give the client its
		// connection window back.
		t.mu.Unlock()
		if h.length > 0 {
			_ = t.writeClient(appendWindowUpdate(nil, 0, h.length))
		}
		return false, nil
	case callDeciding:
		c.hold(unit, h)
		t.mu.Unlock()
		return false, nil
	}
	// callCollecting
	data, err := dataOf(h, unit[frameHeaderLen:])
	if err != nil {
		t.mu.Unlock()
		return false, err
	}
	if len(c.body)+len(data) > c.maxBody {
		c.tooBig = true
	} else {
		c.body = append(c.body, data...)
	}
	if !c.tooBig && !c.complete() && !h.has(flagEndStream) {
		t.mu.Unlock()
		return true, nil
	}
	c.hold(unit, h)
	c.state = callDeciding
	t.mu.Unlock()
	t.starts = append(t.starts, c)
	return false, nil
}

// clientReset ends a stream the client gave up on.
func (t *tunnel) clientReset(stream uint32) bool {
	t.mu.Lock()
	if t.draining && stream > t.lastStream {
		t.mu.Unlock()
		return false
	}
	t.mu.Unlock()
	if t.endStream(stream) {
		// Forward the reset first; the pump closes after its write.
		go t.close()
	}
	return true
}

// endStream records that a stream ended on either side: a guarded call on
// it leaves the decision, its held window goes back to the client, and the
// Gate hears of a finished pull or removal. It reports whether the tunnel,
// draining, has nothing left to carry.
func (t *tunnel) endStream(stream uint32) bool {
	t.mu.Lock()
	restore := t.endCallLocked(stream)
	kind, open := t.streams[stream]
	delete(t.streams, stream)
	idle := t.closeIdle && len(t.streams) == 0
	t.mu.Unlock()
	t.afterEnd(kind, open, restore)
	return idle
}

// endCallLocked takes a guarded call out of the decision (its stream ended
// on one side) and returns the held bytes' window to give back.
func (t *tunnel) endCallLocked(stream uint32) uint32 {
	c := t.calls[stream]
	if c == nil {
		return 0
	}
	delete(t.calls, stream)
	var restore uint32
	if c.state != callForwarded {
		restore = c.heldFlow
		c.heldFlow = 0
	}
	c.state = callAnswered
	c.cancel()
	c.endBatchWait()
	return restore
}

// afterEnd gives back held window and tells the Gate when images changed.
func (t *tunnel) afterEnd(kind streamKind, open bool, restore uint32) {
	if restore > 0 {
		_ = t.writeClient(appendWindowUpdate(nil, 0, restore))
	}
	if open && kind == streamImagesChange {
		t.s.imagesChanged()
	}
}

// settleWindowUpdate keeps back, from the client's connection-level credit,
// what it returns for DATA the tunnel wrote itself. It reports whether
// anything is left to forward (a zero increment is a protocol error).
func (t *tunnel) settleWindowUpdate(unit []byte) bool {
	inc := binary.BigEndian.Uint32(unit[frameHeaderLen:]) & 0x7fffffff
	t.mu.Lock()
	if t.debt == 0 {
		t.mu.Unlock()
		return true
	}
	take := min(t.debt, uint64(inc))
	t.debt -= take
	t.mu.Unlock()
	inc -= uint32(take)
	if inc == 0 {
		return false
	}
	binary.BigEndian.PutUint32(unit[frameHeaderLen:], inc)
	return true
}

// fromUpstream copies containerd's frames to the client unchanged, noting
// which streams end and what containerd's settings are.
func (t *tunnel) fromUpstream() error {
	fb := newFrameBuf(t.upstream)
	for {
		if err := fb.fill(); err != nil {
			return err
		}
		w := 0
		closeAfter := false
		for {
			unit, h, ok, err := fb.next(t.clMaxFrame.Load())
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			switch h.typ {
			case frameHeaders, frameData:
				if h.has(flagEndStream) && t.endStream(h.stream) {
					closeAfter = true
				}
			case frameRSTStream:
				if t.endStream(h.stream) {
					closeAfter = true
				}
			case frameSettings:
				if !h.has(flagAck) {
					settingsEach(unit[frameHeaderLen:], func(id uint16, v uint32) {
						switch id {
						case settingHeaderTableSize:
							t.upTableSize.Store(v)
						case settingMaxFrameSize:
							if validMaxFrameSize(v) {
								t.upMaxFrame.Store(v)
							}
						}
					})
				}
			}
			w = fb.keep(w, unit)
		}
		if w > 0 {
			if err := t.writeClient(fb.buf[:w]); err != nil {
				return fmt.Errorf("write client: %w", err)
			}
		}
		if closeAfter {
			t.close()
			return nil
		}
	}
}
