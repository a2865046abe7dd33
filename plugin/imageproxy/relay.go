package imageproxy

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// anyStream describes an upstream call of unknown shape: allowing both sides
// to stream covers unary, server-, client- and bidi-streaming methods alike.
var anyStream = grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// handle is the gRPC UnknownServiceHandler: every call lands here.
func (s *Server) handle(_ any, ss grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "pullguard: no method name on the call")
	}
	switch {
	case method == methodPullImage:
		return s.pullImage(ss)
	case unaryImageMethods[method]:
		err := s.forwardUnary(ss, method)
		if method == methodRemoveImage {
			s.imagesChanged()
		}
		return err
	case strings.HasPrefix(method, imageServicePrefix):
		// An image method newer than the compiled cri-api: relayed as it is,
		// whatever its shape.
		return s.forwardStream(ss, method)
	case strings.HasPrefix(method, runtimeServicePrefix):
		return status.Errorf(codes.Unimplemented,
			"pullguard serves the CRI image service only: point the runtime endpoint (kubelet's containerRuntimeEndpoint, crictl's --runtime-endpoint) at containerd, %s", s.runtimeEP)
	}
	return status.Errorf(codes.Unimplemented, "pullguard: unknown service for method %s", method)
}

// hopHeaders are metadata keys that belong to one connection: grpc-go sets
// its own on pullguard's call, and a client's must not reach containerd.
// containerd-namespace selects containerd's namespace: pullguard's calls
// are made in the CRI's, never in one a client names.
var hopHeaders = map[string]bool{
	"content-type": true, "user-agent": true, "te": true, "connection": true,
	"grpc-accept-encoding": true, "grpc-encoding": true, "grpc-timeout": true,
	"containerd-namespace": true,
}

// firstMessageTimeout bounds how long a unary call's request may take to
// arrive after its headers: kubelet sends both at once, and a client that
// opens calls and never sends would otherwise hold them, and its
// connection, for ever.
const firstMessageTimeout = 30 * time.Second

// recvRequest reads a unary call's one request into m, within
// firstMessageTimeout. On timeout the handler returns, which ends the call;
// the message is read into a frame of the reader's own, so a late one is
// freed there, never written into m after the handler has moved on.
func recvRequest(ss grpc.ServerStream, m *frame) error {
	type result struct {
		f   frame
		err error
	}
	done := make(chan result, 1)
	go func() {
		var f frame
		err := ss.RecvMsg(&f)
		done <- result{f, err}
	}()
	t := time.NewTimer(firstMessageTimeout)
	defer t.Stop()
	var err error
	select {
	case r := <-done:
		if r.err == nil {
			*m = r.f
		}
		return r.err
	case <-t.C:
		err = status.Errorf(codes.DeadlineExceeded, "pullguard: the request message did not arrive within %s of its headers", firstMessageTimeout)
	case <-ss.Context().Done():
		err = status.FromContextError(ss.Context().Err()).Err()
	}
	go func() {
		r := <-done
		r.f.free()
	}()
	return err
}

// outgoingContext carries the client's application metadata to pullguard's
// own call; the deadline travels in ctx (grpc-go parsed it once, for both).
func outgoingContext(ctx context.Context) context.Context {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok || len(md) == 0 {
		return ctx
	}
	out := metadata.MD{}
	for k, v := range md {
		if strings.HasPrefix(k, ":") || strings.HasPrefix(k, "grpc-") || hopHeaders[k] {
			continue
		}
		out[k] = v
	}
	return metadata.NewOutgoingContext(ctx, out)
}

// forwardUnary relays one request and one response without decoding either.
func (s *Server) forwardUnary(ss grpc.ServerStream, method string) error {
	var req frame
	if err := recvRequest(ss, &req); err != nil {
		return err
	}
	defer req.free()
	return s.invoke(ss, method, &req)
}

// invoke sends req (a *frame or a proto message) upstream and relays the
// response, headers, trailers and status back to the client.
func (s *Server) invoke(ss grpc.ServerStream, method string, req any) error {
	var (
		resp            frame
		header, trailer metadata.MD
	)
	defer resp.free()
	err := s.upstream.Invoke(outgoingContext(ss.Context()), method, req, &resp,
		grpc.ForceCodecV2(s.codec), grpc.Header(&header), grpc.Trailer(&trailer))
	s.observe(method, err)
	return s.reply(ss, &resp, header, trailer, err)
}

// reply sends an upstream outcome to the client: metadata first, then either
// the upstream's status error unchanged or the response.
func (s *Server) reply(ss grpc.ServerStream, resp any, header, trailer metadata.MD, err error) error {
	if len(header) > 0 {
		if herr := ss.SetHeader(header); herr != nil {
			return herr
		}
	}
	if len(trailer) > 0 {
		ss.SetTrailer(trailer)
	}
	if err != nil {
		return err
	}
	return ss.SendMsg(resp)
}

// forwardStream relays a call of any shape: messages flow both ways until the
// upstream ends the call, whose status is returned to the client unchanged.
func (s *Server) forwardStream(ss grpc.ServerStream, method string) error {
	ctx, cancel := context.WithCancel(ss.Context())
	// Ending the handler also ends the upstream call (and the pump below).
	defer cancel()

	cs, err := s.upstream.NewStream(outgoingContext(ctx), &anyStream, method, grpc.ForceCodecV2(s.codec))
	if err != nil {
		s.observe(method, err)
		return err
	}
	pumpErr := make(chan error, 1)
	go pumpToUpstream(ss, cs, cancel, pumpErr)

	// Header blocks until the upstream sends headers or ends the call; a
	// trailers-only response leaves it empty and RecvMsg reports the status.
	if header, herr := cs.Header(); herr == nil && len(header) > 0 {
		if err := ss.SendHeader(header); err != nil {
			return err
		}
	}
	for {
		var f frame
		err := cs.RecvMsg(&f)
		if err != nil {
			ss.SetTrailer(cs.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			s.observe(method, err)
			// When the client side failed (e.g. an oversized message), the
			// upstream only saw a cancellation: report the real cause.
			if status.Code(err) == codes.Canceled {
				select {
				case perr := <-pumpErr:
					return perr
				default:
				}
			}
			return err
		}
		err = ss.SendMsg(&f)
		f.free()
		if err != nil {
			return err
		}
	}
}

// pumpToUpstream copies the client's messages to the upstream call and
// half-closes it when the client has sent everything. A failure reading from
// the client is put in errs, then ends the whole call through cancel.
func pumpToUpstream(ss grpc.ServerStream, cs grpc.ClientStream, cancel context.CancelFunc, errs chan<- error) {
	for {
		var f frame
		if err := ss.RecvMsg(&f); err != nil {
			if errors.Is(err, io.EOF) {
				// Nothing useful to do with a CloseSend error: the
				// upstream's status arrives through RecvMsg.
				_ = cs.CloseSend()
				return
			}
			errs <- err
			cancel()
			return
		}
		err := cs.SendMsg(&f)
		f.free()
		if err != nil {
			// Either the upstream ended the call (io.EOF) or the call
			// failed: in both cases cs.RecvMsg reports the status.
			return
		}
	}
}

// codeOf is err's gRPC status code.
func codeOf(err error) codes.Code { return status.Code(err) }
