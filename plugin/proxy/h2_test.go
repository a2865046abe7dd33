package proxy

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"
)

// The tunnel's header blocks sit between containerd's: decoding them must
// leave the client's dynamic table exactly as containerd's encoder left it.
func TestHpackLiteralLeavesTableAlone(t *testing.T) {
	var upstream bytes.Buffer
	enc := hpack.NewEncoder(&upstream)
	for _, f := range []hpack.HeaderField{{Name: "content-type", Value: "application/grpc"}, {Name: "x-a", Value: "1"}} {
		if err := enc.WriteField(f); err != nil {
			t.Fatal(err)
		}
	}
	dec := hpack.NewDecoder(defaultHeaderTableSize, nil)
	if _, err := dec.DecodeFull(upstream.Bytes()); err != nil {
		t.Fatal(err)
	}

	msg := "denied: ünïcode & 100% \"quoted\"\n" + string(make([]byte, 300))
	block := appendHpackLiteral([]byte{hpackStatus200}, "grpc-message", percentEncode(msg))
	got, err := dec.DecodeFull(block)
	if err != nil {
		t.Fatalf("decode tunnel block: %v", err)
	}
	if len(got) != 2 || got[0].Name != ":status" || got[0].Value != "200" || got[1].Name != "grpc-message" || got[1].Value != percentEncode(msg) {
		t.Fatalf("decoded %v", got)
	}

	// containerd's next block refers to its dynamic table by index: still
	// valid only if the tunnel's block changed nothing.
	upstream.Reset()
	if err := enc.WriteField(hpack.HeaderField{Name: "x-a", Value: "1"}); err != nil {
		t.Fatal(err)
	}
	if upstream.Len() != 1 {
		t.Fatalf("encoder did not index x-a (%d bytes)", upstream.Len())
	}
	got, err = dec.DecodeFull(upstream.Bytes())
	if err != nil || len(got) != 1 || got[0].Name != "x-a" || got[0].Value != "1" {
		t.Fatalf("upstream's indexed field after the tunnel's block: %v, %v", got, err)
	}
}

func TestPercentEncode(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain message: ok", "plain message: ok"},
		{"100%", "100%25"},
		{"line\nbreak", "line%0Abreak"},
		{"é", "%C3%A9"},
		{"", ""},
	}
	for _, tc := range tests {
		if got := percentEncode(tc.in); got != tc.want {
			t.Errorf("percentEncode(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseGRPCTimeout(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1S", time.Second, true},
		{"250m", 250 * time.Millisecond, true},
		{"99999999H", time.Duration(1<<63 - 1), true},
		{"5n", 5, true},
		{"S", 0, false},
		{"10x", 0, false},
		{"123456789S", 0, false},
		{"-1S", 0, false},
	}
	for _, tc := range tests {
		got, err := parseGRPCTimeout(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("parseGRPCTimeout(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// readerConn is a net.Conn over a byte stream, for feeding frameBuf.
type readerConn struct {
	net.Conn
	r io.Reader
}

func (c readerConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// FuzzFrameBuf cuts arbitrary bytes into units: it must never panic, never
// return a unit larger than the bounds, and every unit must be one frame or
// one whole header block.
func FuzzFrameBuf(f *testing.F) {
	frame := func(typ, flags uint8, stream uint32, payload []byte) []byte {
		return append(appendFrameHeader(nil, len(payload), typ, flags, stream), payload...)
	}
	f.Add(frame(frameData, flagEndStream, 1, []byte{0, 0, 0, 0, 0}), uint16(3))
	f.Add(append(frame(frameHeaders, 0, 1, []byte{0x88}), frame(frameContinuation, flagEndHeaders, 1, []byte{0x88})...), uint16(1))
	f.Add(append(frame(frameHeaders, 0, 1, nil), frame(frameData, 0, 1, nil)...), uint16(7))
	f.Add(appendWindowUpdate(appendRSTStream(nil, 1, errCodeCancel), 0, 100), uint16(2))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint16) {
		step := int(chunk%64) + 1
		fb := newFrameBuf(readerConn{r: &chunkReader{data: data, step: step}})
		total := 0
		for {
			if err := fb.fill(); err != nil {
				break
			}
			for {
				unit, h, ok, err := fb.next(defaultMaxFrameSize)
				if err != nil {
					return
				}
				if !ok {
					break
				}
				total += len(unit)
				if h != parseFrameHeader(unit) || len(unit) < frameHeaderLen+int(h.length) {
					t.Fatalf("unit of %d bytes does not hold its frame %+v", len(unit), h)
				}
				if len(unit) > frameHeaderLen+int(h.length) {
					if h.typ != frameHeaders || len(unit) > maxHeaderBlock+2*(frameHeaderLen+defaultMaxFrameSize) {
						t.Fatalf("%d-byte unit for frame %+v", len(unit), h)
					}
					if _, err := headerBlock(unit); err != nil && !h.has(flagPadded) && !h.has(flagPriority) {
						t.Fatalf("headerBlock on a whole unit: %v", err)
					}
				}
				if h.typ == frameData {
					_, _ = dataOf(h, unit[frameHeaderLen:])
				}
			}
		}
		if total > len(data) {
			t.Fatalf("cut %d bytes out of %d", total, len(data))
		}
	})
}

// chunkReader hands out data a few bytes at a time, as a socket may.
type chunkReader struct {
	data []byte
	step int
}

func (r *chunkReader) Read(b []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(b, r.data[:min(len(r.data), r.step)])
	r.data = r.data[n:]
	return n, nil
}

func FuzzParseGRPCTimeout(f *testing.F) {
	for _, s := range []string{"1S", "250m", "99999999H", "x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseGRPCTimeout(s)
		if err == nil && d < 0 {
			t.Fatalf("parseGRPCTimeout(%q) = %v", s, d)
		}
	})
}
