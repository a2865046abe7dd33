package proxy

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// pullImage puts a PullImage call before the Gate and carries out its plan.
func (s *Server) pullImage(ss grpc.ServerStream, g Gate) error {
	var raw frame
	if err := ss.RecvMsg(&raw); err != nil {
		return err
	}
	defer raw.free()
	req := &runtimeapi.PullImageRequest{}
	if err := proto.Unmarshal(raw.bytes(), req); err != nil {
		// Undecodable means undecidable: deny rather than forward blind.
		return status.Errorf(codes.InvalidArgument, "pullguard: decode PullImageRequest: %v", err)
	}
	plan, err := g.AdmitPull(ss.Context(), req)
	if err != nil {
		return err
	}
	var forward any = &raw
	pulled := req.GetImage().GetImage()
	if plan != nil && plan.Forward != nil {
		forward = plan.Forward
		pulled = plan.Forward.GetImage().GetImage()
	}
	if plan == nil || plan.TagAs == "" {
		return s.invoke(ss, methodPullImage, forward)
	}
	return s.pullAndTag(ss, forward, pulled, plan.TagAs)
}

// createContainer puts a CreateContainer call before the Gate and forwards the
// original bytes when admitted.
func (s *Server) createContainer(ss grpc.ServerStream, g Gate) error {
	var raw frame
	if err := ss.RecvMsg(&raw); err != nil {
		return err
	}
	defer raw.free()
	req := &runtimeapi.CreateContainerRequest{}
	if err := proto.Unmarshal(raw.bytes(), req); err != nil {
		return status.Errorf(codes.InvalidArgument, "pullguard: decode CreateContainerRequest: %v", err)
	}
	if err := g.AdmitCreate(ss.Context(), req); err != nil {
		return err
	}
	return s.invoke(ss, methodCreateContainer, &raw)
}
