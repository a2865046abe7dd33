package proxy

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"strconv"
	"strings"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// callState is where a guarded call stands; the tunnel's mu guards it.
type callState uint8

const (
	// callCollecting: the message is still arriving; frames pass on.
	callCollecting callState = iota
	// callDeciding: the message is complete; its last frame and any later
	// ones are held while the Gate decides.
	callDeciding
	// callForwarded: admitted as asked; containerd answers the call.
	callForwarded
	// callAnswered: the tunnel answers (or the call ended on one side);
	// containerd's stream is reset.
	callAnswered
)

// maxGRPCMessage bounds the grpc-message the tunnel writes, so that its
// trailers fit in one frame whatever the denial says.
const maxGRPCMessage = 8 << 10

// call is a PullImage or CreateContainer the tunnel guards.
type call struct {
	t      *tunnel
	stream uint32
	method string
	md     metadata.MD // the client's metadata, for calls the proxy makes on its behalf
	gate   Gate
	ctx    context.Context
	cancel context.CancelFunc

	// guarded by t.mu
	state    callState
	body     []byte   // DATA payloads so far: one length-prefixed gRPC message
	maxBody  int      // bound on body
	tooBig   bool     // the message outgrew maxBody
	held     [][]byte // frames kept back from containerd, in order
	heldFlow uint32   // their flow-controlled bytes
	// While inBatch, the batch holding this call's headers has not been
	// written (see tunnel.decideInBatch): what the decision sends
	// containerd is left for the batch to carry (batchForward,
	// batchReset), and batchWait is closed to end the batch's wait.
	inBatch      bool
	batchWait    chan struct{}
	batchForward bool
	batchReset   bool
}

// endBatchWait lets the batch waiting on this call go (t.mu held).
func (c *call) endBatchWait() {
	if c.batchWait != nil {
		close(c.batchWait)
		c.batchWait = nil
	}
}

func newCall(t *tunnel, stream uint32, method string, fields []hpack.HeaderField, g Gate) *call {
	c := &call{t: t, stream: stream, method: method, gate: g, md: metadata.MD{}, maxBody: 5 + t.s.maxMsg, state: callCollecting}
	ctx := t.ctx
	var cancel context.CancelFunc
	for _, f := range fields {
		switch {
		case f.Name == "grpc-timeout":
			if d, err := parseGRPCTimeout(f.Value); err == nil {
				ctx, cancel = context.WithTimeout(ctx, d)
			}
		case strings.HasPrefix(f.Name, ":") || reservedHeader(f.Name):
		case strings.HasSuffix(f.Name, "-bin"):
			if v, err := decodeBinHeader(f.Value); err == nil {
				c.md.Append(f.Name, string(v))
			}
		default:
			c.md.Append(f.Name, f.Value)
		}
	}
	if cancel == nil {
		ctx, cancel = context.WithCancel(ctx)
	}
	c.ctx, c.cancel = ctx, cancel
	return c
}

// reservedHeader lists the headers gRPC itself manages on each hop; they are
// not the caller's metadata. Compression is negotiated per hop too.
func reservedHeader(name string) bool {
	switch name {
	case "content-type", "user-agent", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding",
		"grpc-message-type", "grpc-status", "grpc-message", "grpc-status-details-bin":
		return true
	}
	return false
}

func decodeBinHeader(v string) ([]byte, error) {
	if len(v)%4 == 0 {
		return base64.StdEncoding.DecodeString(v)
	}
	return base64.RawStdEncoding.DecodeString(v)
}

// complete reports whether body holds a whole message (t.mu held).
func (c *call) complete() bool {
	return len(c.body) >= 5 && uint64(len(c.body)) >= 5+uint64(binary.BigEndian.Uint32(c.body[1:5]))
}

// hold keeps a frame back from containerd (t.mu held).
func (c *call) hold(unit []byte, h frameHeader) {
	c.held = append(c.held, append([]byte(nil), unit...))
	c.heldFlow += h.length
}

// message returns the request message, or the status to refuse it with.
func (c *call) message() ([]byte, error) {
	c.t.mu.Lock()
	defer c.t.mu.Unlock()
	switch {
	case c.tooBig:
		return nil, status.Errorf(codes.ResourceExhausted, "pullguard: %s request larger than %d bytes", c.method, c.maxBody-5)
	case !c.complete():
		return nil, status.Errorf(codes.InvalidArgument, "pullguard: %s request ended before its message", c.method)
	case c.body[0] != 0:
		// kubelet does not compress; undecodable means undecidable.
		return nil, status.Errorf(codes.Unimplemented, "pullguard: compressed %s requests are not supported", c.method)
	}
	n := binary.BigEndian.Uint32(c.body[1:5])
	if len(c.body) != 5+int(n) {
		return nil, status.Errorf(codes.InvalidArgument, "pullguard: %s carries more than one message", c.method)
	}
	return c.body[5:], nil
}

// decide runs the Gate on the call and carries out what it says.
func (c *call) decide() {
	defer c.cancel()
	msg, err := c.message()
	if err != nil {
		c.refuse(err)
		return
	}
	switch c.method {
	case methodPullImage:
		c.t.s.pullImage(c, msg)
	case methodCreateContainer:
		c.t.s.createContainer(c, msg)
	}
}

// forward lets the call go to containerd as the client sent it: the held
// frames follow the rest, and containerd's answer reaches the client.
func (c *call) forward() {
	t := c.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if c.state != callDeciding {
		return // the call ended meanwhile
	}
	c.state = callForwarded
	if c.inBatch {
		c.batchForward = true
		c.endBatchWait()
		return
	}
	var b []byte
	for _, f := range c.held {
		b = append(b, f...)
	}
	c.held = nil
	// Under t.mu, so that no later frame of this stream overtakes them.
	_ = t.writeUpstream(b)
}

// release takes the call from containerd: the tunnel will answer it. It
// reports false when the call already ended.
//
// containerd's stream is reset only after the answer is sent (see answer):
// containerd may answer a reset itself ("context canceled"), and its header
// blocks cannot be kept from the client (HPACK), so they must come when the
// client already has the tunnel's answer and ignores them.
func (c *call) release() bool {
	t := c.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if c.state != callDeciding {
		return false
	}
	c.state = callAnswered
	c.held = nil
	// What follows may take long (a pinned pull): the batch goes now.
	c.endBatchWait()
	return true
}

// refuse answers the call with an error status.
func (c *call) refuse(err error) {
	if c.release() {
		c.answer(nil, err)
	}
}

// answer sends the client the response to a released call: resp, or the
// status of err. The stream then ends.
func (c *call) answer(resp proto.Message, err error) {
	t := c.t
	var payload []byte
	if err == nil {
		b, merr := proto.Marshal(resp)
		if merr != nil {
			err = status.Errorf(codes.Internal, "pullguard: encode %s response: %v", c.method, merr)
		} else {
			payload = binary.BigEndian.AppendUint32([]byte{0}, uint32(len(b)))
			payload = append(payload, b...)
		}
	}
	maxFrame := int(t.clMaxFrame.Load())
	var out []byte
	if err == nil {
		block := responseHeaders()
		out = appendFrameHeader(out, len(block), frameHeaders, flagEndHeaders, c.stream)
		out = append(out, block...)
		out = appendDataFrames(out, c.stream, payload, maxFrame, false)
		trailer := appendHpackLiteral(nil, "grpc-status", "0")
		out = appendFrameHeader(out, len(trailer), frameHeaders, flagEndHeaders|flagEndStream, c.stream)
		out = append(out, trailer...)
	} else {
		block := statusBlock(status.Convert(err))
		out = appendFrameHeader(out, len(block), frameHeaders, flagEndHeaders|flagEndStream, c.stream)
		out = append(out, block...)
	}

	t.mu.Lock()
	kind, open := t.streams[c.stream]
	if !open || t.calls[c.stream] != c {
		t.mu.Unlock()
		return // ended on one side meanwhile (see endCallLocked)
	}
	delete(t.calls, c.stream)
	delete(t.streams, c.stream)
	t.debt += uint64(len(payload))
	// The held frames never reach containerd: their window goes back.
	if c.heldFlow > 0 {
		out = appendWindowUpdate(out, 0, c.heldFlow)
		c.heldFlow = 0
	}
	idle := t.closeIdle && len(t.streams) == 0
	// The answer is written before the reset can go, under t.mu: a batch
	// still waiting on this call could otherwise send the reset first.
	_ = t.writeClient(out)
	// The reset must not overtake the call's headers: if their batch is
	// still waiting, it carries the reset.
	resetNow := !c.inBatch
	c.batchReset = c.inBatch
	t.mu.Unlock()
	if resetNow {
		_ = t.writeUpstream(appendRSTStream(nil, c.stream, errCodeCancel))
	}
	t.afterEnd(kind, open, 0)
	if idle {
		t.close()
	}
}

// responseHeaders is the header block that opens every gRPC response.
func responseHeaders() []byte {
	return appendHpackLiteral([]byte{hpackStatus200}, "content-type", "application/grpc")
}

// statusBlock is a trailers-only response's header block for st.
func statusBlock(st *status.Status) []byte {
	b := responseHeaders()
	b = appendHpackLiteral(b, "grpc-status", strconv.Itoa(int(st.Code())))
	msg := percentEncode(st.Message())
	if len(msg) > maxGRPCMessage {
		msg = msg[:maxGRPCMessage]
		// Never cut a %XX escape in half.
		if i := strings.LastIndexByte(msg[max(0, len(msg)-2):], '%'); i >= 0 {
			msg = msg[:len(msg)-2+i]
		}
	}
	if msg != "" {
		b = appendHpackLiteral(b, "grpc-message", msg)
	}
	if p := st.Proto(); len(p.GetDetails()) > 0 {
		if d, err := proto.Marshal(p); err == nil && len(d) <= maxGRPCMessage {
			b = appendHpackLiteral(b, "grpc-status-details-bin", base64.RawStdEncoding.EncodeToString(d))
		}
	}
	return b
}
