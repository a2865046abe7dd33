package proxy

import (
	"errors"
	"fmt"
	"net"
)

// readBufSize is what one read asks for: large enough that a ListContainers
// response of a busy node crosses in a few reads.
const readBufSize = 64 << 10

// frameBuf reads a connection and cuts it into units: a frame, or a HEADERS
// frame together with its CONTINUATION frames, which must reach the other
// side with nothing in between. Units are slices of buf, valid until the next
// fill.
type frameBuf struct {
	conn net.Conn
	buf  []byte
	r, n int // buf[r:n] is read and not yet cut
	need int // bytes the next unit needs from r, when known
}

func newFrameBuf(conn net.Conn) *frameBuf {
	return &frameBuf{conn: conn, buf: make([]byte, readBufSize)}
}

// next returns the next complete unit, or ok=false when more bytes must be
// read first. Frames longer than maxFrame (the receiver's
// SETTINGS_MAX_FRAME_SIZE) are a protocol error: the tunnel never buffers
// more than a peer would accept.
func (b *frameBuf) next(maxFrame uint32) (unit []byte, h frameHeader, ok bool, err error) {
	avail := b.buf[b.r:b.n]
	if len(avail) < frameHeaderLen {
		b.need = frameHeaderLen
		return nil, h, false, nil
	}
	h = parseFrameHeader(avail)
	if h.length > maxFrame {
		return nil, h, false, fmt.Errorf("http2: %d-byte frame exceeds the peer's maximum of %d", h.length, maxFrame)
	}
	size := frameHeaderLen + int(h.length)
	if h.typ == frameContinuation {
		return nil, h, false, errors.New("http2: CONTINUATION without a HEADERS frame")
	}
	if h.typ == frameHeaders && !h.has(flagEndHeaders) {
		// Walk the CONTINUATIONs to the end of the header block.
		for {
			if size > maxHeaderBlock {
				return nil, h, false, fmt.Errorf("http2: header block over %d bytes", maxHeaderBlock)
			}
			if len(avail) < size+frameHeaderLen {
				b.need = size + frameHeaderLen
				return nil, h, false, nil
			}
			ch := parseFrameHeader(avail[size:])
			if ch.typ != frameContinuation || ch.stream != h.stream {
				return nil, h, false, errors.New("http2: header block interrupted by another frame")
			}
			if ch.length > maxFrame {
				return nil, h, false, fmt.Errorf("http2: %d-byte frame exceeds the peer's maximum of %d", ch.length, maxFrame)
			}
			size += frameHeaderLen + int(ch.length)
			if ch.has(flagEndHeaders) {
				break
			}
		}
	}
	if len(avail) < size {
		b.need = size
		return nil, h, false, nil
	}
	b.r += size
	return avail[:size:size], h, true, nil
}

// keep moves a unit returned by next down to offset w, so that the units to
// forward end up contiguous at the start of buf, and returns the new end.
func (b *frameBuf) keep(w int, unit []byte) int {
	start := b.r - len(unit)
	if start != w {
		copy(b.buf[w:], unit)
	}
	return w + len(unit)
}

// fill moves the uncut bytes to the front and reads more, growing buf when
// the next unit does not fit.
func (b *frameBuf) fill() error {
	if b.r > 0 {
		b.n = copy(b.buf, b.buf[b.r:b.n])
		b.r = 0
	}
	if b.need > len(b.buf) {
		grown := make([]byte, b.need)
		copy(grown, b.buf[:b.n])
		b.buf = grown
	} else if b.need <= b.n && len(b.buf) > readBufSize && b.n <= readBufSize {
		// A large frame has passed: give the memory back.
		b.buf = append(make([]byte, 0, readBufSize), b.buf[:b.n]...)[:readBufSize]
	}
	m, err := b.conn.Read(b.buf[b.n:])
	b.n += m
	if m > 0 {
		return nil
	}
	return err
}

// settingsEach calls f with each (identifier, value) of a SETTINGS payload:
// the tunnel reads the few that bound what it buffers and decodes.
func settingsEach(payload []byte, f func(id uint16, v uint32)) {
	for len(payload) >= 6 {
		f(uint16(payload[0])<<8|uint16(payload[1]),
			uint32(payload[2])<<24|uint32(payload[3])<<16|uint32(payload[4])<<8|uint32(payload[5]))
		payload = payload[6:]
	}
}
