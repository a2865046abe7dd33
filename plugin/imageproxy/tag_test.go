package imageproxy

import (
	"strings"
	"testing"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestPinnedPullIsTagged(t *testing.T) {
	digest := "sha256:" + strings.Repeat("d", 64)
	otherDigest := "sha256:" + strings.Repeat("9", 64)
	tests := []struct {
		name     string
		asked    string // what the client pulls
		forward  string // what the gate pins it to ("" = original request)
		tagAs    string
		existing *imagesapi.Image // already in containerd under the tag
		wantName string           // containerd name that must now point at digest
		// wantWrite is whether the tag had to be written (a warm pull
		// finds it already naming the digest).
		wantWrite bool
	}{
		{
			name: "new tag", asked: "registry.example/app:v1", forward: "registry.example/app@" + digest,
			tagAs: "registry.example/app:v1", wantName: "registry.example/app:v1", wantWrite: true,
		},
		{
			name: "familiar name normalised", asked: "app:v1", forward: "app@" + digest,
			tagAs: "app:v1", wantName: "docker.io/library/app:v1", wantWrite: true,
		},
		{
			name: "client already asked by digest", asked: "registry.example/app@" + digest,
			tagAs: "registry.example/app:v1", wantName: "registry.example/app:v1", wantWrite: true,
		},
		{
			name: "existing tag moved, other labels kept", asked: "registry.example/app:v1", forward: "registry.example/app@" + digest,
			tagAs: "registry.example/app:v1", wantName: "registry.example/app:v1", wantWrite: true,
			existing: &imagesapi.Image{
				Name:   "registry.example/app:v1",
				Target: &types.Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: otherDigest, Size: 1},
				Labels: map[string]string{"io.cri-containerd.pinned": "pinned"},
			},
		},
		{
			name: "warm pull: tag already names the digest", asked: "registry.example/app:v1", forward: "registry.example/app@" + digest,
			tagAs: "registry.example/app:v1", wantName: "registry.example/app:v1",
			existing: &imagesapi.Image{
				Name:   "registry.example/app:v1",
				Target: &types.Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digest, Size: 1},
				Labels: map[string]string{criImageLabel: criImageLabelValue, "io.cri-containerd.pinned": "pinned"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			plan := &PullPlan{TagAs: tc.tagAs}
			if tc.forward != "" {
				plan.Forward = &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: tc.forward}}
			}
			h := newHarness(t, &recordingGate{plan: plan}, 0)
			if tc.existing != nil {
				h.upstream.mu.Lock()
				h.upstream.images[tc.existing.Name] = tc.existing
				h.upstream.mu.Unlock()
			}
			img := runtimeapi.NewImageServiceClient(dialTest(t, h.sock))
			resp, err := img.PullImage(t.Context(), pullRequest(tc.asked))
			if err != nil {
				t.Fatalf("PullImage: %v", err)
			}
			if resp.ImageRef != testImageID {
				t.Errorf("ImageRef = %q, want containerd's %q", resp.ImageRef, testImageID)
			}
			wantPulled := tc.forward
			if wantPulled == "" {
				wantPulled = tc.asked
			}
			if pulls := h.upstream.recordedPulls(); len(pulls) != 1 || pulls[0].GetImage().GetImage() != wantPulled {
				t.Errorf("containerd pulled %v, want only %s", pulls, wantPulled)
			}
			writes := len(h.upstream.callsTo(imagesCreate)) + len(h.upstream.callsTo(imagesUpdate))
			if (writes > 0) != tc.wantWrite {
				t.Errorf("%d image writes, want a write: %v", writes, tc.wantWrite)
			}
			tagged, ok := h.upstream.image(tc.wantName)
			if !ok {
				t.Fatalf("no image named %s in containerd", tc.wantName)
			}
			if tagged.Target.GetDigest() != digest {
				t.Errorf("%s points at %s, want the pinned %s", tc.wantName, tagged.Target.GetDigest(), digest)
			}
			if tagged.Labels[criImageLabel] != criImageLabelValue {
				t.Errorf("%s labels %v, want %s=%s", tc.wantName, tagged.Labels, criImageLabel, criImageLabelValue)
			}
			if tc.existing != nil && tagged.Labels["io.cri-containerd.pinned"] != "pinned" {
				t.Errorf("existing label lost: %v", tagged.Labels)
			}
			st, err := img.ImageStatus(t.Context(), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: tc.asked}})
			if err != nil || st.GetImage().GetId() != testImageID {
				t.Errorf("ImageStatus(%s) = %v, %v; want image %s", tc.asked, st, err, testImageID)
			}
		})
	}
}

const (
	imagesCreate = "/containerd.services.images.v1.Images/Create"
	imagesUpdate = "/containerd.services.images.v1.Images/Update"
)

func TestPinnedPullFailures(t *testing.T) {
	digest := "sha256:" + strings.Repeat("d", 64)
	tests := []struct {
		name        string
		forward     string
		tagAs       string
		wantCode    codes.Code
		wantMessage string
	}{
		{name: "upstream pull fails: its error unchanged", forward: "registry.example/fail-pull@" + digest, tagAs: "registry.example/fail-pull:v1",
			wantCode: codes.NotFound, wantMessage: `failed to pull and unpack image "registry.example/fail-pull@` + digest + `": not found`},
		{name: "forward not pinned", forward: "registry.example/app:v2", tagAs: "registry.example/app:v1",
			wantCode: codes.Internal, wantMessage: "not pinned to a digest"},
		{name: "tag is a digest", forward: "registry.example/app@" + digest, tagAs: "registry.example/app@" + digest,
			wantCode: codes.Internal, wantMessage: "not a tag reference"},
		{name: "tag unparsable", forward: "registry.example/app@" + digest, tagAs: "Bad Name",
			wantCode: codes.Internal, wantMessage: "parse tag"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			plan := &PullPlan{TagAs: tc.tagAs, Forward: &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: tc.forward}}}
			h := newHarness(t, &recordingGate{plan: plan}, 0)
			img := runtimeapi.NewImageServiceClient(dialTest(t, h.sock))
			_, err := img.PullImage(t.Context(), pullRequest("registry.example/app:v1"))
			st := status.Convert(err)
			if st.Code() != tc.wantCode || !strings.Contains(st.Message(), tc.wantMessage) {
				t.Errorf("got %v %q, want %v containing %q", st.Code(), st.Message(), tc.wantCode, tc.wantMessage)
			}
			if _, ok := h.upstream.image(normalizeTestRef(tc.tagAs)); ok && tc.tagAs != tc.forward {
				t.Errorf("tag %s was created despite the failure", tc.tagAs)
			}
		})
	}
}
