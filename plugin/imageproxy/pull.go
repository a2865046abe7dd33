package imageproxy

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// pullImage decides a PullImage call and, when admitted, makes the pull
// itself: pinned to the verified digest, with the tag kubelet asked for kept
// pointing at what was pulled.
func (s *Server) pullImage(ss grpc.ServerStream) error {
	var raw frame
	if err := recvRequest(ss, &raw); err != nil {
		return err
	}
	defer raw.free()
	g := s.currentGate()
	if g == nil {
		defer s.imagesChanged()
		return s.invoke(ss, methodPullImage, &raw)
	}
	// Fields this cri-api does not know are dropped: containerd could act on
	// a field pullguard never decided on.
	req := &runtimeapi.PullImageRequest{}
	if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw.bytes(), req); err != nil {
		// Undecodable means undecidable: refused, never relayed blind.
		return status.Errorf(codes.InvalidArgument, "pullguard: decode PullImageRequest: %v", err)
	}
	ctx := ss.Context()
	plan, err := g.AdmitPull(ctx, req)
	if err != nil {
		return err
	}
	defer s.imagesChanged()
	forward := req
	if plan != nil && plan.Forward != nil {
		forward = plan.Forward
	}
	if plan == nil || plan.TagAs == "" {
		return s.invoke(ss, methodPullImage, forward)
	}
	resp, err := s.pullAndTag(outgoingContext(ctx), forward, plan.TagAs)
	if err != nil {
		return err
	}
	return ss.SendMsg(resp)
}
