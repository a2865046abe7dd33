package imageproxy

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"

	// The proto codec registers itself; imported for that effect so
	// encoding.GetCodecV2("proto") is never nil.
	_ "google.golang.org/grpc/encoding/proto"
)

// frame is one gRPC message kept in its wire encoding. The proxy moves frames
// between the client and the upstream without decoding them, so methods newer
// than the compiled cri-api pass through and the common path costs no
// protobuf work.
type frame struct {
	data mem.BufferSlice
}

// free releases the frame's reference on its buffers. Safe on an empty frame.
func (f *frame) free() {
	f.data.Free()
	f.data = nil
}

// bytes returns the frame's contents as one contiguous slice (a copy when the
// message arrived in several buffers).
func (f *frame) bytes() []byte {
	if len(f.data) == 1 {
		return f.data[0].ReadOnlyData()
	}
	return f.data.Materialize()
}

// rawCodec passes *frame values through untouched and falls back to protobuf
// for real messages (requests the proxy builds itself, e.g. a rewritten pull).
//
// Its name is "proto" because the content-subtype on the wire must stay what
// CRI clients and containerd expect.
type rawCodec struct {
	proto encoding.CodecV2
}

func newRawCodec() (rawCodec, error) {
	p := encoding.GetCodecV2("proto")
	if p == nil {
		return rawCodec{}, fmt.Errorf("grpc proto codec is not registered")
	}
	return rawCodec{proto: p}, nil
}

func (c rawCodec) Name() string { return "proto" }

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*frame); ok {
		// gRPC frees what Marshal returns; the frame keeps its own reference
		// and is freed by its owner.
		f.data.Ref()
		return f.data, nil
	}
	return c.proto.Marshal(v)
}

func (c rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*frame); ok {
		// gRPC frees data when Unmarshal returns: keep a reference instead of
		// copying.
		data.Ref()
		f.data = data
		return nil
	}
	return c.proto.Unmarshal(data, v)
}
