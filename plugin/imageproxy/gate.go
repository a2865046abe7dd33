package imageproxy

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Gate decides on PullImage. The proxy declares it (the consumer side);
// enforcer.go implements it on top of plugin/enforce.
//
// Errors a Gate returns are sent to the client as they are, so a Gate builds
// them with google.golang.org/grpc/status (kubelet keeps the bare message only
// for codes.Unknown).
type Gate interface {
	AdmitPull(ctx context.Context, req *runtimeapi.PullImageRequest) (*PullPlan, error)
}

// PullPlan says how an admitted pull is carried out. A nil *PullPlan admits the
// request unchanged.
type PullPlan struct {
	// Forward is the request sent upstream, possibly rewritten (e.g. the image
	// pinned to repo@sha256:...). Nil forwards the client's original bytes.
	Forward *runtimeapi.PullImageRequest
	// TagAs, if non-empty, is the name the pulled image must also be known
	// under once the pull succeeded (the tag kubelet asked for, when Forward
	// pinned it to a digest), so that kubelet's ImageStatus by that name finds
	// it and IfNotPresent does not pull again.
	TagAs string
}
