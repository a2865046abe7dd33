package imageproxy

import (
	"context"

	"github.com/distribution/reference"
	"google.golang.org/protobuf/proto"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	crierrors "k8s.io/cri-api/pkg/errors"

	"github.com/pullguard/pullguard/plugin/enforce"
	"github.com/pullguard/pullguard/plugin/registry"
)

// podNamespaceLabel is the label kubelet puts on every sandbox; it is the
// fallback when metadata.namespace is empty (older or unusual clients).
const podNamespaceLabel = "io.kubernetes.pod.namespace"

// Decider is what the Enforcer needs from the policy engine.
type Decider interface {
	Decide(ctx context.Context, req enforce.Request) *enforce.Decision
}

// Enforcer is the Gate that translates CRI requests into policy decisions
// and decisions back into CRI errors. It is the only place where CRI types
// meet the engine.
type Enforcer struct {
	decider Decider
}

// NewEnforcer returns a Gate deciding with d.
func NewEnforcer(d Decider) *Enforcer {
	return &Enforcer{decider: d}
}

// AdmitPull decides on a PullImage request.
func (e *Enforcer) AdmitPull(ctx context.Context, req *runtimeapi.PullImageRequest) (*PullPlan, error) {
	image := req.GetImage().GetImage()
	d := e.decider.Decide(ctx, enforce.Request{
		Op:          enforce.OpPull,
		Namespace:   sandboxNamespace(req.GetSandboxConfig()),
		Image:       image,
		Credentials: credentialsFromCRI(req.GetAuth()),
	})
	if d.Denied() {
		return nil, denialError(d)
	}
	return pinnedPlan(req, d), nil
}

// pinnedPlan makes containerd pull exactly the digest that was verified, so
// a tag moved after verification cannot swap the content, and keeps the tag
// kubelet asked for pointing at it.
func pinnedPlan(req *runtimeapi.PullImageRequest, d *enforce.Decision) *PullPlan {
	if d.PinnedRef == "" {
		return nil // nothing was resolved: forward as asked
	}
	named, err := reference.ParseNormalizedNamed(d.Image)
	if err != nil {
		return nil
	}
	if _, hasDigest := named.(reference.Digested); hasDigest {
		// Already pinned by the client (repo@digest or repo:tag@digest).
		return nil
	}
	fwd := proto.Clone(req).(*runtimeapi.PullImageRequest)
	fwd.Image.Image = d.PinnedRef
	return &PullPlan{Forward: fwd, TagAs: named.String()}
}

// sandboxNamespace returns the pod's namespace, "" when the request has no
// pod (an admin's crictl pull): the cluster policy then decides.
func sandboxNamespace(sc *runtimeapi.PodSandboxConfig) string {
	if sc == nil {
		return ""
	}
	if ns := sc.GetMetadata().GetNamespace(); ns != "" {
		return ns
	}
	return sc.GetLabels()[podNamespaceLabel]
}

// credentialsFromCRI maps kubelet's auth the way containerd does, for the
// host actually contacted: credentials for another server are not sent.
// kubelet already chose them for this image's repository, and containerd
// sends them to every repository of the host, so the repository is ignored.
func credentialsFromCRI(a *runtimeapi.AuthConfig) registry.CredentialFunc {
	if a == nil {
		return nil
	}
	return func(host, _ string) *registry.Credentials {
		return registry.CredentialsFromCRI(host, a.GetUsername(), a.GetPassword(), a.GetAuth(),
			a.GetServerAddress(), a.GetIdentityToken(), a.GetRegistryToken())
	}
}

// denialError maps a denial to the status kubelet understands: code Unknown
// is the only one whose bare message kubelet keeps, and the message's prefix
// becomes the pod's reason. A malformed name is the client's mistake and says
// so with InvalidArgument.
func denialError(d *enforce.Decision) error {
	code := codes.Unknown
	if d.Category == enforce.InvalidImage {
		code = codes.InvalidArgument
	}
	return status.Error(code, d.Message())
}

// criReasons are the CRI's own error reasons that enforce's categories
// spell: kubelet turns a pull error whose message starts with one into the
// pod's reason (CRI-O uses the same sentinels).
var criReasons = map[enforce.Category]error{
	enforce.SignatureValidationFailed: crierrors.ErrSignatureValidationFailed,
	enforce.RegistryUnavailable:       crierrors.ErrRegistryUnavailable,
}
