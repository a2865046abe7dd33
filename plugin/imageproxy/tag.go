package imageproxy

import (
	"context"
	"fmt"
	"time"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/distribution/reference"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const (
	// namespaceHeader is the gRPC metadata key containerd reads its namespace
	// from.
	namespaceHeader = "containerd-namespace"
	// criImageLabel marks an image as managed by containerd's CRI plugin; CRI
	// puts it on every reference it creates for a pull (containerd v2
	// internal/cri/labels: io.cri-containerd.image=managed).
	criImageLabel      = "io.cri-containerd.image"
	criImageLabelValue = "managed"
	// criCacheWait bounds how long a pull waits for containerd's CRI image
	// cache to pick up the new name (it does so asynchronously, from the
	// image create/update event).
	criCacheWait = 2 * time.Second
	// tagTimeout bounds the whole tagging step (kubelet sets no deadline on
	// PullImage, and pulls are serialised on the node).
	tagTimeout = 30 * time.Second
)

// pullAndTag has containerd pull forward (the image pinned to the verified
// digest) and, once that succeeded, makes the image known under tagAs too, so
// that kubelet finds it by the tag it asked for. The response is containerd's
// (the image ID). An empty tagAs only pulls.
func (s *Server) pullAndTag(ctx context.Context, forward *runtimeapi.PullImageRequest, tagAs string) (*runtimeapi.PullImageResponse, error) {
	pulled := forward.GetImage().GetImage()
	var refs *tagRefs
	warm := make(chan bool, 1)
	if tagAs != "" {
		var err error
		if refs, err = parseTagRefs(pulled, tagAs); err != nil {
			return nil, status.Errorf(codes.Internal, "pullguard: cannot tag %s as %s: %v", pulled, tagAs, err)
		}
		// The lookup runs alongside the pull: a pull by digest never
		// changes the tag's own record.
		go func() { warm <- s.tagAlreadyNames(ctx, refs) }()
	}
	resp, err := runtimeapi.NewImageServiceClient(s.upstream).PullImage(ctx, forward)
	if err != nil {
		s.observe(methodPullImage, err)
		return nil, err
	}
	if refs == nil || <-warm {
		return resp, nil
	}
	if err := s.tagImage(ctx, refs, resp.ImageRef); err != nil {
		s.log.Error("tag pinned pull", "image", pulled, "tag", tagAs, "err", err)
		return nil, status.Errorf(codes.Internal, "pullguard: pulled %s but could not tag it as %s: %v", pulled, tagAs, err)
	}
	return resp, nil
}

// tagRefs are the two names of a pinned pull: what was pulled (repo@digest)
// and the tag kubelet asked for.
type tagRefs struct {
	canonical reference.Canonical
	tagged    reference.Named
}

func parseTagRefs(pulledRef, tagAs string) (*tagRefs, error) {
	digested, err := reference.ParseDockerRef(pulledRef)
	if err != nil {
		return nil, fmt.Errorf("parse pulled reference %q: %w", pulledRef, err)
	}
	canonical, ok := digested.(reference.Canonical)
	if !ok {
		return nil, fmt.Errorf("pulled reference %q is not pinned to a digest", pulledRef)
	}
	tagged, err := reference.ParseDockerRef(tagAs)
	if err != nil {
		return nil, fmt.Errorf("parse tag %q: %w", tagAs, err)
	}
	if _, ok := tagged.(reference.Tagged); !ok {
		return nil, fmt.Errorf("%q is not a tag reference", tagAs)
	}
	return &tagRefs{canonical: canonical, tagged: tagged}, nil
}

func (s *Server) imagesClient(ctx context.Context) (context.Context, imagesapi.ImagesClient) {
	return metadata.NewOutgoingContext(ctx, metadata.Pairs(namespaceHeader, s.namespace)), imagesapi.NewImagesClient(s.upstream)
}

// tagAlreadyNames reports whether the tag already names the verified
// content as a CRI image: a warm pull then changes nothing (no update, and
// no CRI cache event to wait for, since the CRI cache learnt the tag when it
// was made: the pull that made it waited for that). Any error means "no":
// the tag is then written, which is always correct.
func (s *Server) tagAlreadyNames(ctx context.Context, refs *tagRefs) bool {
	ctx, cancel := context.WithTimeout(ctx, tagTimeout)
	defer cancel()
	ictx, images := s.imagesClient(ctx)
	cur, err := images.Get(ictx, &imagesapi.GetImageRequest{Name: refs.tagged.String()})
	return err == nil &&
		cur.GetImage().GetTarget().GetDigest() == refs.canonical.Digest().String() &&
		cur.GetImage().GetLabels()[criImageLabel] == criImageLabelValue
}

// tagImage creates or updates the containerd image refs.tagged to point
// where refs.canonical points, labelled as a CRI-managed image, then waits
// (bounded) for the CRI image cache to resolve the tag to imageID.
func (s *Server) tagImage(ctx context.Context, refs *tagRefs, imageID string) error {
	ctx, cancel := context.WithTimeout(ctx, tagTimeout)
	defer cancel()
	canonical, tagged := refs.canonical, refs.tagged
	ictx, images := s.imagesClient(ctx)
	got, err := images.Get(ictx, &imagesapi.GetImageRequest{Name: canonical.String()})
	if err != nil {
		return fmt.Errorf("get pulled image %s: %w", canonical, err)
	}
	target := got.GetImage().GetTarget()
	if target == nil {
		return fmt.Errorf("pulled image %s has no target", canonical)
	}
	// What gets the tag must be exactly what was verified and pulled.
	if target.Digest != canonical.Digest().String() {
		return fmt.Errorf("pulled image %s points at %s, not at its digest", canonical, target.Digest)
	}

	img := &imagesapi.Image{
		Name:   tagged.String(),
		Target: target,
		Labels: map[string]string{criImageLabel: criImageLabelValue},
	}
	_, err = images.Create(ictx, &imagesapi.CreateImageRequest{Image: img})
	if status.Code(err) == codes.AlreadyExists {
		// Only the fields CRI itself updates: other labels (e.g. pinned)
		// stay as they are.
		mask := &fieldmaskpb.FieldMask{Paths: []string{"target", "labels." + criImageLabel}}
		_, err = images.Update(ictx, &imagesapi.UpdateImageRequest{Image: img, UpdateMask: mask})
	}
	if err != nil {
		return fmt.Errorf("create or update image %s: %w", tagged, err)
	}
	return s.waitCRIImage(ctx, tagged.String(), imageID)
}

// waitCRIImage waits until CRI ImageStatus(name) reports imageID, so that the
// kubelet's next lookup by name cannot miss. Polling is bounded by
// criCacheWait; it usually succeeds on the first or second try.
func (s *Server) waitCRIImage(ctx context.Context, name, imageID string) error {
	ctx, cancel := context.WithTimeout(ctx, criCacheWait)
	defer cancel()
	imgs := runtimeapi.NewImageServiceClient(s.upstream)
	delay := 5 * time.Millisecond
	var last string
	for {
		st, err := imgs.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: name}})
		switch {
		case err != nil:
			last = err.Error()
		case st.GetImage() == nil:
			last = "not in the CRI image cache yet"
		case imageID != "" && st.GetImage().GetId() != imageID:
			last = fmt.Sprintf("resolves to %s, not %s yet", st.GetImage().GetId(), imageID)
		default:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for CRI to resolve %s: %s: %w", name, last, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, 100*time.Millisecond)
	}
}
