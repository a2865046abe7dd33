package proxy

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// pullAndTag pulls forward upstream, then makes the image known under tagAs.
// Phase 2 fills this in; until then a plan that needs tagging is refused
// rather than leaving kubelet unable to find the image.
func (s *Server) pullAndTag(ss grpc.ServerStream, forward any, tagAs string) error {
	_ = forward
	return status.Errorf(codes.Unimplemented, "pullguard: tagging pulled image as %s is not implemented yet", tagAs)
}
