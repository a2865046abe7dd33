package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullguard/pullguard/integration/testbed"
	"github.com/pullguard/pullguard/plugin/imageproxy"
)

// pinningGate admits every pull pinned to one digest, as the enforcer does after verifying
// it, and runs beforePull first (the window in which a tag can move).
type pinningGate struct {
	pinned     string
	beforePull func(context.Context) error
}

func (g *pinningGate) AdmitPull(ctx context.Context, req *runtimeapi.PullImageRequest) (*imageproxy.PullPlan, error) {
	if g.beforePull != nil {
		if err := g.beforePull(ctx); err != nil {
			return nil, err
		}
	}
	fwd := proto.Clone(req).(*runtimeapi.PullImageRequest)
	fwd.Image.Image = g.pinned
	return &imageproxy.PullPlan{Forward: fwd, TagAs: req.GetImage().GetImage()}, nil
}

// TestPinnedPullAgainstContainerd checks, on a real containerd, that a pull pinned to the
// verified digest lands under the tag kubelet asked for (ImageStatus by tag finds it, so
// IfNotPresent does not pull again) and that moving the tag between verification and pull
// cannot get the other image under that name.
func TestPinnedPullAgainstContainerd(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs containerd and a registry (skipped with -short)")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	bed, err := testbed.Start(ctx, testbed.Options{Logger: log})
	if err != nil {
		t.Fatalf("test bed: %v", err)
	}
	t.Cleanup(func() {
		if err := bed.Close(context.Background()); err != nil {
			t.Errorf("close test bed: %v", err)
		}
	})

	verifiedImg, err := testbed.TinyImage("verified")
	if err != nil {
		t.Fatal(err)
	}
	swappedImg, err := testbed.TinyImage("swapped in after verification")
	if err != nil {
		t.Fatal(err)
	}
	verified, err := bed.Registry.Push(ctx, "pinned/app:v1", verifiedImg)
	if err != nil {
		t.Fatal(err)
	}
	var swapped testbed.PushedImage
	gate := &pinningGate{
		pinned: verified.Pinned(),
		beforePull: func(ctx context.Context) error {
			var err error
			swapped, err = bed.Registry.Push(ctx, "pinned/app:v1", swappedImg)
			return err
		},
	}

	srv, err := imageproxy.New(imageproxy.Options{Upstream: bed.Containerd.Socket, Gate: gate, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(bed.Dir, "pinpg", "pg.sock")
	l, err := imageproxy.Listen(sock, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("proxy shutdown: %v", err)
		}
		<-served
	})

	via, err := testbed.DialCRI(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer via.Close()
	direct, err := testbed.DialCRI(bed.Containerd.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()

	for attempt := 1; attempt <= 2; attempt++ { // the second pull updates an existing tag
		resp, err := via.Image.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: verified.Ref}})
		if err != nil {
			t.Fatalf("pull %d of %s through the proxy: %v", attempt, verified.Ref, err)
		}
		if resp.ImageRef != verified.ID {
			t.Errorf("pull %d: ImageRef %s, want the verified image's ID %s", attempt, resp.ImageRef, verified.ID)
		}
	}
	if swapped.Digest == "" || swapped.Digest == verified.Digest {
		t.Fatalf("the tag was not moved to a different image (swapped %q)", swapped.Digest)
	}

	// kubelet's IfNotPresent check is ImageStatus by the name in the pod spec.
	for name, c := range map[string]*testbed.CRIClient{"direct": direct, "through the proxy": via} {
		st, err := c.Image.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: verified.Ref}})
		if err != nil {
			t.Fatalf("ImageStatus(%s) %s: %v", verified.Ref, name, err)
		}
		img := st.GetImage()
		if img == nil {
			t.Fatalf("ImageStatus(%s) %s: not found; kubelet would pull again", verified.Ref, name)
		}
		if img.Id != verified.ID || !slices.Contains(img.RepoTags, verified.Ref) || !slices.Contains(img.RepoDigests, verified.Pinned()) {
			t.Errorf("ImageStatus(%s) %s = id %s tags %v digests %v; want the verified image %s under that tag",
				verified.Ref, name, img.Id, img.RepoTags, img.RepoDigests, verified.ID)
		}
	}

	// Ground truth from containerd itself: the tag points at the verified manifest, and the
	// swapped image is not there at all.
	r := bed.Ctr(ctx, "images", "ls")
	if r.Err != nil {
		t.Fatalf("ctr images ls: %v\n%s", r.Err, r.Output())
	}
	var tagLine string
	for _, line := range strings.Split(r.Stdout, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == verified.Ref {
			tagLine = line
		}
	}
	if !strings.Contains(tagLine, verified.Digest) {
		t.Errorf("containerd's %s is %q, want it at %s", verified.Ref, tagLine, verified.Digest)
	}
	if strings.Contains(r.Stdout, swapped.Digest) {
		t.Errorf("the image swapped in under the tag (%s) reached containerd:\n%s", swapped.Digest, r.Stdout)
	}
}
