package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// The HTTP/2 wire format (RFC 9113) as far as the tunnel needs it: frame
// headers, the few frames it writes itself, and HPACK literals that leave the
// peer's dynamic table alone.

const (
	frameHeaderLen = 9
	clientPreface  = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

	frameData         uint8 = 0x0
	frameHeaders      uint8 = 0x1
	frameRSTStream    uint8 = 0x3
	frameSettings     uint8 = 0x4
	framePing         uint8 = 0x6
	frameGoAway       uint8 = 0x7
	frameWindowUpdate uint8 = 0x8
	frameContinuation uint8 = 0x9

	flagEndStream  uint8 = 0x1
	flagAck        uint8 = 0x1
	flagEndHeaders uint8 = 0x4
	flagPadded     uint8 = 0x8
	flagPriority   uint8 = 0x20

	settingHeaderTableSize = 0x1
	settingMaxFrameSize    = 0x5

	// defaultMaxFrameSize is SETTINGS_MAX_FRAME_SIZE until a peer says
	// otherwise, and what the tunnel's own frames never exceed.
	defaultMaxFrameSize = 16384
	// defaultHeaderTableSize is SETTINGS_HEADER_TABLE_SIZE's initial value.
	defaultHeaderTableSize = 4096
	// maxHeaderTableSize bounds the HPACK table a client may make the tunnel
	// keep, whatever containerd advertises.
	maxHeaderTableSize = 1 << 20
	// maxHeaderBlock bounds one header block (HEADERS + CONTINUATION): CRI
	// metadata is a few hundred bytes.
	maxHeaderBlock = 1 << 20

	errCodeNo       uint32 = 0x0
	errCodeProtocol uint32 = 0x1
	errCodeCancel   uint32 = 0x8
)

// validMaxFrameSize says whether a SETTINGS_MAX_FRAME_SIZE value is one
// RFC 9113 allows; others are left for the receiving end to refuse.
func validMaxFrameSize(v uint32) bool {
	return v >= defaultMaxFrameSize && v < 1<<24
}

type frameHeader struct {
	length uint32
	typ    uint8
	flags  uint8
	stream uint32
}

func parseFrameHeader(b []byte) frameHeader {
	return frameHeader{
		length: uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]),
		typ:    b[3],
		flags:  b[4],
		stream: binary.BigEndian.Uint32(b[5:9]) & 0x7fffffff,
	}
}

func (h frameHeader) has(f uint8) bool { return h.flags&f != 0 }

func appendFrameHeader(dst []byte, length int, typ, flags uint8, stream uint32) []byte {
	dst = append(dst, byte(length>>16), byte(length>>8), byte(length), typ, flags)
	return binary.BigEndian.AppendUint32(dst, stream&0x7fffffff)
}

func appendRSTStream(dst []byte, stream, code uint32) []byte {
	dst = appendFrameHeader(dst, 4, frameRSTStream, 0, stream)
	return binary.BigEndian.AppendUint32(dst, code)
}

func appendWindowUpdate(dst []byte, stream, increment uint32) []byte {
	dst = appendFrameHeader(dst, 4, frameWindowUpdate, 0, stream)
	return binary.BigEndian.AppendUint32(dst, increment&0x7fffffff)
}

func appendGoAway(dst []byte, lastStream, code uint32) []byte {
	dst = appendFrameHeader(dst, 8, frameGoAway, 0, 0)
	dst = binary.BigEndian.AppendUint32(dst, lastStream&0x7fffffff)
	return binary.BigEndian.AppendUint32(dst, code)
}

// appendDataFrames frames payload as DATA on stream, split at the peer's
// frame size; the last frame ends the stream if endStream.
func appendDataFrames(dst []byte, stream uint32, payload []byte, maxFrame int, endStream bool) []byte {
	for {
		n := min(len(payload), maxFrame)
		var flags uint8
		if n == len(payload) && endStream {
			flags = flagEndStream
		}
		dst = appendFrameHeader(dst, n, frameData, flags, stream)
		dst = append(dst, payload[:n]...)
		payload = payload[n:]
		if len(payload) == 0 {
			return dst
		}
	}
}

var errBadPadding = errors.New("http2: padding longer than the frame")

// dataOf returns a DATA frame's data without its padding.
func dataOf(h frameHeader, payload []byte) ([]byte, error) {
	if !h.has(flagPadded) {
		return payload, nil
	}
	if len(payload) < 1 || int(payload[0]) > len(payload)-1 {
		return nil, errBadPadding
	}
	return payload[1 : len(payload)-int(payload[0])], nil
}

// fragmentOf returns a HEADERS or CONTINUATION frame's header block fragment,
// without padding and priority fields.
func fragmentOf(h frameHeader, payload []byte) ([]byte, error) {
	if h.typ != frameHeaders {
		return payload, nil
	}
	pad := 0
	if h.has(flagPadded) {
		if len(payload) < 1 {
			return nil, errBadPadding
		}
		pad = int(payload[0])
		payload = payload[1:]
	}
	if h.has(flagPriority) {
		if len(payload) < 5 {
			return nil, errors.New("http2: HEADERS too short for its priority fields")
		}
		payload = payload[5:]
	}
	if pad > len(payload) {
		return nil, errBadPadding
	}
	return payload[:len(payload)-pad], nil
}

// appendHpackInt encodes v with an n-bit prefix (RFC 7541 §5.1), the
// prefix's high bits being first.
func appendHpackInt(dst []byte, first byte, n uint, v uint64) []byte {
	limit := uint64(1)<<n - 1
	if v < limit {
		return append(dst, first|byte(v))
	}
	dst = append(dst, first|byte(limit))
	v -= limit
	for v >= 128 {
		dst = append(dst, byte(v&0x7f)|0x80)
		v >>= 7
	}
	return append(dst, byte(v))
}

// appendHpackLiteral encodes a header field as "literal never indexed, new
// name" (RFC 7541 §6.2.3): it neither reads nor changes the receiver's
// dynamic table, so frames written this way can sit between the upstream's
// own header blocks without disturbing the HPACK state the two ends share.
func appendHpackLiteral(dst []byte, name, value string) []byte {
	dst = append(dst, 0x10)
	dst = appendHpackInt(dst, 0, 7, uint64(len(name)))
	dst = append(dst, name...)
	dst = appendHpackInt(dst, 0, 7, uint64(len(value)))
	return append(dst, value...)
}

// hpackStatus200 is ":status: 200" from the static table (index 8): an
// indexed field of the static table does not touch the dynamic one either.
const hpackStatus200 = 0x88

// parseGRPCTimeout reads the grpc-timeout header ("<1-8 digits><unit>").
func parseGRPCTimeout(s string) (time.Duration, error) {
	if len(s) < 2 || len(s) > 9 {
		return 0, fmt.Errorf("grpc-timeout %q: bad length", s)
	}
	n, err := strconv.ParseUint(s[:len(s)-1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("grpc-timeout %q: %w", s, err)
	}
	var unit time.Duration
	switch s[len(s)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, fmt.Errorf("grpc-timeout %q: unknown unit", s)
	}
	const maxDuration = time.Duration(1<<63 - 1)
	if n > uint64(maxDuration/unit) {
		return maxDuration, nil
	}
	return time.Duration(n) * unit, nil
}

// percentEncode encodes a grpc-message value as the gRPC HTTP/2 protocol
// asks: printable ASCII except '%' as is, everything else as %XX.
func percentEncode(s string) string {
	const hex = "0123456789ABCDEF"
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '%' {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	b := make([]byte, 0, len(s)+16)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hex[c>>4], hex[c&0xf])
	}
	return string(b)
}
