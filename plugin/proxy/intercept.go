package proxy

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// pullImage puts a PullImage call before the Gate and carries out its plan.
func (s *Server) pullImage(c *call, msg []byte) {
	req := &runtimeapi.PullImageRequest{}
	if err := proto.Unmarshal(msg, req); err != nil {
		// Undecodable means undecidable: deny rather than forward blind.
		c.refuse(status.Errorf(codes.InvalidArgument, "pullguard: decode PullImageRequest: %v", err))
		return
	}
	plan, err := c.gate.AdmitPull(c.ctx, req)
	if err != nil {
		c.refuse(err)
		return
	}
	if plan == nil || (plan.Forward == nil && plan.TagAs == "") {
		c.forward()
		return
	}
	// The pull containerd does is not the one the client asked for: the
	// proxy makes it on its own connection and answers the client itself.
	if !c.release() {
		return
	}
	fwd := req
	if plan.Forward != nil {
		fwd = plan.Forward
	}
	ctx := metadata.NewOutgoingContext(c.ctx, c.md)
	resp, err := s.pullAndTag(ctx, fwd, plan.TagAs)
	s.imagesChanged()
	c.answer(resp, err)
}

// createContainer puts a CreateContainer call before the Gate; an admitted
// call reaches containerd byte for byte as the client sent it.
func (s *Server) createContainer(c *call, msg []byte) {
	req := &runtimeapi.CreateContainerRequest{}
	if err := proto.Unmarshal(msg, req); err != nil {
		c.refuse(status.Errorf(codes.InvalidArgument, "pullguard: decode CreateContainerRequest: %v", err))
		return
	}
	if err := c.gate.AdmitCreate(c.ctx, req); err != nil {
		c.refuse(err)
		return
	}
	c.forward()
}
