package proxy

import (
	"context"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/distribution/reference"
	"google.golang.org/protobuf/proto"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

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

// ImageStatuser looks images up in the runtime; the upstream's CRI image
// service satisfies it.
type ImageStatuser interface {
	ImageStatus(ctx context.Context, in *runtimeapi.ImageStatusRequest, opts ...grpc.CallOption) (*runtimeapi.ImageStatusResponse, error)
}

// Enforcer is the Gate that translates CRI requests into policy decisions
// and decisions back into CRI errors. It is the only place where CRI types
// meet the engine.
type Enforcer struct {
	decider Decider
	images  ImageStatuser
	lookups *imageCache // ImageStatus results of creates; see imagecache.go
}

// NewEnforcer returns a Gate deciding with d; images maps the image IDs of
// CreateContainer requests to their names and digests.
func NewEnforcer(d Decider, images ImageStatuser) *Enforcer {
	return &Enforcer{decider: d, images: images, lookups: newImageCache(time.Now, imageCacheTTL, imageCacheMax)}
}

// ImagesChanged tells the Enforcer that the runtime's images may have changed
// (a PullImage or RemoveImage passed through the proxy): the names and
// digests it remembers for creates are dropped, including those of lookups
// still in flight, so the next create sees the runtime's new state.
func (e *Enforcer) ImagesChanged() {
	e.lookups.invalidate()
}

// ImageService is a CRI image client on the proxy's upstream connection.
func (s *Server) ImageService() runtimeapi.ImageServiceClient {
	return runtimeapi.NewImageServiceClient(s.upstream)
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

// AdmitCreate decides on a CreateContainer request: the container's image
// and every image volume, by the content on the node. This closes the bypass
// of an image pulled for a permissive namespace, or loaded by hand, being
// started in a stricter one without a pull.
func (e *Enforcer) AdmitCreate(ctx context.Context, req *runtimeapi.CreateContainerRequest) error {
	ns := sandboxNamespace(req.GetSandboxConfig())
	specs := []*runtimeapi.ImageSpec{req.GetConfig().GetImage()}
	for _, m := range req.GetConfig().GetMounts() {
		if m.GetImage().GetImage() != "" {
			specs = append(specs, m.GetImage())
		}
	}
	for _, spec := range specs {
		if err := e.admitImage(ctx, ns, spec); err != nil {
			return err
		}
	}
	return nil
}

func (e *Enforcer) admitImage(ctx context.Context, ns string, spec *runtimeapi.ImageSpec) error {
	ref := spec.GetImage()
	if ref == "" {
		return nil // containerd refuses it with its own message
	}
	if e.images == nil {
		return status.Error(codes.Unknown, "SignatureValidationFailed: pullguard cannot look up image "+ref+" to check it")
	}
	img, err := e.lookupImage(ctx, ref)
	if err != nil {
		return err
	}
	if img == nil {
		return nil // not on the node: containerd fails the create itself
	}
	names := createNames(spec, img)
	if len(names) == 0 {
		return status.Errorf(codes.Unknown, "SignatureValidationFailed: pullguard denied image %s for namespace %q: it has no name a policy can match", ref, ns)
	}
	// An image known under several names is admitted only if every name is:
	// which one the pod meant is unknown, and any could be the strict one.
	for _, n := range names {
		req := enforce.Request{Op: enforce.OpCreate, Namespace: ns, Image: n.name, Digest: n.digest}
		if n.digest == "" {
			// No manifest digest on the node for this name: what the
			// registry has under it must be the image the node holds.
			req.ImageID = img.GetId()
		}
		d := e.decider.Decide(ctx, req)
		if d.Denied() {
			return denialError(d)
		}
	}
	return nil
}

// lookupImage returns the runtime's image for ref, nil when it is not on the
// node; by image ID from the cache when it can (see imagecache.go for why
// never by name).
func (e *Enforcer) lookupImage(ctx context.Context, ref string) (*runtimeapi.Image, error) {
	cacheable := isImageID(ref)
	var gen uint64
	if cacheable {
		img, g, ok := e.lookups.get(ref)
		if ok {
			return img, nil
		}
		gen = g
	}
	st, err := e.images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil {
		return nil, status.Errorf(status.Code(err), "pullguard: look up image %s: %s", ref, status.Convert(err).Message())
	}
	if cacheable {
		e.lookups.put(ref, st.GetImage(), gen)
	}
	return st.GetImage(), nil
}

type nameDigest struct{ name, digest string }

// createNames returns the names to decide on and the digest the node holds
// for each. The pod's own string (user_specified_image) is preferred; an
// image ID with no such string is decided under every name it has.
func createNames(spec *runtimeapi.ImageSpec, img *runtimeapi.Image) []nameDigest {
	digests := map[string]string{} // repository -> manifest digest on the node
	for _, rd := range img.GetRepoDigests() {
		if n, err := reference.ParseNormalizedNamed(rd); err == nil {
			if c, ok := n.(reference.Canonical); ok {
				digests[reference.TrimNamed(c).String()] = c.Digest().String()
			}
		}
	}
	pick := func(s string) (nameDigest, bool) {
		n, err := reference.ParseNormalizedNamed(s)
		if err != nil {
			return nameDigest{}, false
		}
		nd := nameDigest{name: s, digest: digests[reference.TrimNamed(n).String()]}
		if c, ok := n.(reference.Canonical); ok {
			nd.digest = c.Digest().String()
		}
		return nd, true
	}
	var candidates []string
	switch {
	// crictl (and a pod naming its image by ID) sends the image ID as the
	// user-specified string: that is no name either.
	case spec.GetUserSpecifiedImage() != "" && !isImageID(spec.GetUserSpecifiedImage()):
		candidates = []string{spec.GetUserSpecifiedImage()}
	case !isImageID(spec.GetImage()):
		candidates = []string{spec.GetImage()}
	default:
		candidates = append(candidates, img.GetRepoTags()...)
		if len(candidates) == 0 {
			candidates = img.GetRepoDigests()
		}
	}
	var out []nameDigest
	for _, c := range candidates {
		if nd, ok := pick(c); ok {
			out = append(out, nd)
		}
	}
	return out
}

func isImageID(s string) bool {
	hex, ok := strings.CutPrefix(s, "sha256:")
	return ok && len(hex) == 64
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
