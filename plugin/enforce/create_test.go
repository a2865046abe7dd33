package enforce

import (
	"bytes"
	"context"
	"crypto/x509/pkix"
	"encoding/json"
	"strings"
	"testing"

	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"

	"github.com/pullguard/pullguard/plugin/registry/registrytest"
	"github.com/pullguard/pullguard/plugin/trust/trusttest"
)

// TestCreateWithoutNodeDigest: at create time with no manifest digest on the
// node (an image loaded with ctr, or a tag re-pointed in containerd), the
// registry's content under the name counts only if it is the node's image.
func TestCreateWithoutNodeDigest(t *testing.T) {
	b := newTrustBed(t)
	ctx := context.Background()
	r := b.srv.Repo(t, "app/loaded")
	leaf := b.release.Leaf(t, pkix.Name{Country: []string{"US"}, Province: []string{"WA"}, Organization: []string{"Example"}, CommonName: "signer"})
	img := registrytest.PushImage(t, r, "v1")
	trusttest.Sign(t, r, img, leaf, trusttest.JWS)
	raw, err := content.FetchAll(ctx, r, img)
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	nodeID := m.Config.Digest.String()
	// The same image behind a multi-platform index, signed as the index.
	idx, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{img}})
	idxDesc := content.NewDescriptorFromBytes(ocispec.MediaTypeImageIndex, idx)
	if err := r.PushReference(ctx, idxDesc, bytes.NewReader(idx), "multi"); err != nil {
		t.Fatal(err)
	}
	trusttest.Sign(t, r, idxDesc, leaf, trusttest.JWS)
	other := "sha256:" + strings.Repeat("f", 64)

	e := b.engine(t, nil, cluster(trustRule("*", "release")))
	for _, tc := range []struct {
		tag, imageID string
		verdict      Verdict
	}{
		{"v1", nodeID, Admit},
		{"v1", other, Deny},
		{"multi", nodeID, Admit},
		{"multi", other, Deny},
	} {
		d := e.Decide(ctx, Request{Op: OpCreate, Namespace: "prod", Image: b.srv.Host + "/app/loaded:" + tc.tag, ImageID: tc.imageID})
		if d.Verdict != tc.verdict {
			t.Errorf("%s with node image %s: %s, want %s: %s", tc.tag, tc.imageID, d.Verdict, tc.verdict, d.Message())
		}
		if d.Denied() && (d.Category != SignatureValidationFailed || !strings.Contains(d.Message(), "id "+other)) {
			t.Errorf("denial should name the node's image: %s", d.Message())
		}
	}
}
