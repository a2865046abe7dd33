package proxy

import (
	"io"
	"net"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// refuseWait bounds how long a client whose containerd is unreachable is
// kept to be told so.
const refuseWait = 2 * time.Second

// refuseUnavailable speaks just enough HTTP/2 to a client whose tunnel could
// not reach containerd to fail its calls with Unavailable and a message
// naming the cause (a bare closed connection would blame pullguard), then
// sends GOAWAY and closes, so that the client's next call dials again and
// finds containerd once it is back.
func refuseUnavailable(client net.Conn, msg string) {
	defer client.Close()
	_ = client.SetDeadline(time.Now().Add(refuseWait))
	pre := make([]byte, len(clientPreface))
	if _, err := io.ReadFull(client, pre); err != nil || string(pre) != clientPreface {
		return
	}
	if _, err := client.Write(appendFrameHeader(nil, 0, frameSettings, 0, 0)); err != nil {
		return
	}
	block := statusBlock(status.New(codes.Unavailable, msg))
	fb := newFrameBuf(client)
	for {
		if err := fb.fill(); err != nil {
			return
		}
		var out []byte
		var last uint32
		for {
			_, h, ok, err := fb.next(defaultMaxFrameSize)
			if err != nil {
				return
			}
			if !ok {
				break
			}
			switch {
			case h.typ == frameSettings && !h.has(flagAck):
				out = appendFrameHeader(out, 0, frameSettings, flagAck, 0)
			case h.typ == frameHeaders:
				out = appendFrameHeader(out, len(block), frameHeaders, flagEndHeaders|flagEndStream, h.stream)
				out = append(out, block...)
				last = max(last, h.stream)
			}
		}
		if last != 0 {
			out = appendGoAway(out, last, errCodeNo)
		}
		if len(out) > 0 {
			if _, err := client.Write(out); err != nil {
				return
			}
		}
		if last != 0 {
			return
		}
	}
}
