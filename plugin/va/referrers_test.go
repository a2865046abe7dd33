package va_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/pullguard/pullguard/plugin/va"
	"github.com/pullguard/pullguard/plugin/va/vatest"
)

// orasRegistry adapts an oras-go repository to va.Registry the way
// plugin/registry's client does: bounded, digest-verified reads. It is test
// glue, not a fake: every call goes to a real (in-process) OCI registry.
type orasRegistry struct {
	repo           *remote.Repository
	manifestFetchs atomic.Int32
	blobFetches    atomic.Int32
}

func (r *orasRegistry) Referrers(ctx context.Context, subject ocispec.Descriptor, artifactType string) ([]ocispec.Descriptor, error) {
	var out []ocispec.Descriptor
	err := r.repo.Referrers(ctx, subject, artifactType, func(ds []ocispec.Descriptor) error {
		out = append(out, ds...)
		return nil
	})
	return out, err
}

func (r *orasRegistry) FetchManifest(ctx context.Context, desc ocispec.Descriptor) ([]byte, error) {
	r.manifestFetchs.Add(1)
	if desc.Size > 4<<20 {
		return nil, fmt.Errorf("manifest %s too large", desc.Digest)
	}
	rc, err := r.repo.Manifests().Fetch(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return content.ReadAll(rc, desc)
}

func (r *orasRegistry) FetchBlob(ctx context.Context, desc ocispec.Descriptor) ([]byte, error) {
	r.blobFetches.Add(1)
	rc, err := r.repo.Blobs().Fetch(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return content.ReadAll(rc, desc)
}

type testRegistry struct {
	t       *testing.T
	srv     *httptest.Server
	repo    *remote.Repository
	reg     *orasRegistry
	subject ocispec.Descriptor
}

// newTestRegistry starts go-containerregistry's registry with the referrers
// API and pushes a small image to it.
func newTestRegistry(t *testing.T) *testRegistry { return newTestRegistryAPI(t, true) }

// newTestRegistryAPI starts the registry with or without the referrers API;
// without it, oras-go lists referrers in the tag schema ("sha256-<hex>" index)
// when pushing them and reads that index when listing.
func newTestRegistryAPI(t *testing.T, referrersAPI bool) *testRegistry {
	t.Helper()
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.WithReferrersSupport(referrersAPI), ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	repo, err := remote.NewRepository(strings.TrimPrefix(srv.URL, "http://") + "/team/app")
	if err != nil {
		t.Fatal(err)
	}
	repo.PlainHTTP = true
	// The test registry serves the referrers API but does not answer pushes
	// with OCI-Subject; without this oras would also maintain a tag-schema index.
	if err := repo.SetReferrersCapability(referrersAPI); err != nil {
		t.Fatal(err)
	}
	tr := &testRegistry{t: t, srv: srv, repo: repo, reg: &orasRegistry{repo: repo}}
	config := tr.blob(ocispec.MediaTypeImageConfig, []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`))
	layer := tr.blob(ocispec.MediaTypeImageLayerGzip, []byte("not really a tarball"))
	tr.subject = tr.manifest(ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: config, Layers: []ocispec.Descriptor{layer}})
	if err := repo.Tag(context.Background(), tr.subject, "v1"); err != nil {
		t.Fatal(err)
	}
	return tr
}

func (tr *testRegistry) blob(mediaType string, data []byte) ocispec.Descriptor {
	tr.t.Helper()
	d := content.NewDescriptorFromBytes(mediaType, data)
	if err := tr.repo.Push(context.Background(), d, bytes.NewReader(data)); err != nil {
		tr.t.Fatal(err)
	}
	return d
}

func (tr *testRegistry) manifest(m ocispec.Manifest) ocispec.Descriptor {
	tr.t.Helper()
	m.Versioned.SchemaVersion = 2
	m.MediaType = ocispec.MediaTypeImageManifest
	raw, err := json.Marshal(m)
	if err != nil {
		tr.t.Fatal(err)
	}
	d := content.NewDescriptorFromBytes(ocispec.MediaTypeImageManifest, raw)
	d.ArtifactType = m.ArtifactType
	if err := tr.repo.Push(context.Background(), d, bytes.NewReader(raw)); err != nil {
		tr.t.Fatal(err)
	}
	return d
}

type attachStyle int

const (
	// styleOras11 is what `oras attach --artifact-type T` writes: manifest
	// artifactType T, empty config, one layer.
	styleOras11 attachStyle = iota
	// styleConfigType is what trivy's referrer plugin writes: the report
	// media type as config media type, no artifactType.
	styleConfigType
)

// attach pushes report data as a referrer of subject. created zero = no annotation.
func (tr *testRegistry) attach(subject ocispec.Descriptor, style attachStyle, mediaType string, data []byte, created time.Time) ocispec.Descriptor {
	tr.t.Helper()
	layer := tr.blob(mediaType, data)
	m := ocispec.Manifest{Subject: &subject, Layers: []ocispec.Descriptor{layer}}
	switch style {
	case styleOras11:
		m.ArtifactType = mediaType
		m.Config = tr.blob(ocispec.MediaTypeEmptyJSON, []byte("{}"))
	case styleConfigType:
		m.Config = tr.blob(mediaType, []byte("{}"))
	}
	if !created.IsZero() {
		m.Annotations = map[string]string{ocispec.AnnotationCreated: created.UTC().Format(time.RFC3339)}
		if style == styleConfigType {
			m.Annotations = map[string]string{"org.opencontainers.artifact.created": created.UTC().Format(time.RFC3339), "created-by": "trivy"}
		}
	}
	return tr.manifest(m)
}

func (tr *testRegistry) query(requireSigned bool) va.Query {
	return va.Query{Image: va.Image{Subject: tr.subject, Registry: tr.reg}, RequireSigned: requireSigned}
}

// signedSet stands in for plugin/trust, which verifies notation signatures
// and is not written yet: it vouches for exactly the digests it was given.
// The interaction with real signatures belongs to the end-to-end tests.
type signedSet struct {
	signed map[digest.Digest]bool
	err    error // infrastructure failure to return instead
	calls  atomic.Int32
}

func (v *signedSet) VerifyReport(_ context.Context, _ va.Image, desc ocispec.Descriptor) (string, error) {
	v.calls.Add(1)
	if v.err != nil {
		return "", v.err
	}
	if v.signed[desc.Digest] {
		return "scanner", nil
	}
	return "", fmt.Errorf("no notation signature on %s: %w", desc.Digest, va.ErrNotSigned)
}

func scanAt(created time.Time, vulns ...vatest.Vuln) vatest.Scan {
	return vatest.Scan{ScannerVersion: "0.58.1", Created: created, Image: "app", Vulns: vulns}
}

var (
	t0       = time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	critVuln = vatest.Vuln{ID: "CVE-2024-0001", Severity: "CRITICAL", Package: "openssl", Installed: "3.0.2", Fixed: "3.0.14"}
	lowVuln  = vatest.Vuln{ID: "CVE-2024-0009", Severity: "LOW", Package: "bash", Installed: "5.2"}
)

func TestReferrersNewestWins(t *testing.T) {
	ctx := context.Background()
	tr := newTestRegistry(t)
	src := va.NewReferrersSource(va.ReferrersOptions{})

	tr.attach(tr.subject, styleOras11, va.MediaTypeSARIF, vatest.TrivySARIF(scanAt(t0, critVuln)), t0)
	trivyDesc := tr.attach(tr.subject, styleConfigType, va.MediaTypeTrivyJSON, vatest.TrivyJSON(scanAt(t0.Add(time.Hour), lowVuln)), t0.Add(time.Hour))
	// Not reports: must be ignored, not counted, not fetched as reports.
	tr.attach(tr.subject, styleOras11, "application/vnd.cncf.notary.signature", []byte("sig"), t0.Add(5*time.Hour))
	tr.attach(tr.subject, styleOras11, va.MediaTypeCycloneDX, []byte(`{"bomFormat":"CycloneDX","components":[]}`), t0.Add(6*time.Hour))

	att, err := src.Report(ctx, tr.query(false))
	if err != nil {
		t.Fatalf("Report: %v", err)
	}
	if att.Descriptor.Digest != trivyDesc.Digest || att.MediaType != va.MediaTypeTrivyJSON || att.Source != "referrers" ||
		!att.Created.Equal(t0.Add(time.Hour)) || att.Signer != "" || att.Report.ScannerString() != "Trivy 0.58.1" || len(att.Report.Findings) != 1 {
		t.Fatalf("got %+v (report %+v), want the Trivy JSON report %s", att, att.Report, trivyDesc.Digest)
	}

	// A newer SARIF report replaces it.
	newer := tr.attach(tr.subject, styleOras11, va.MediaTypeSARIF, vatest.GrypeSARIF(scanAt(time.Time{}, critVuln)), t0.Add(2*time.Hour))
	tr.reg.manifestFetchs.Store(0)
	att, err = src.Report(ctx, tr.query(false))
	if err != nil {
		t.Fatalf("Report: %v", err)
	}
	if att.Descriptor.Digest != newer.Digest || att.Report.Scanner != "grype" {
		t.Fatalf("got %s (%s), want newest %s", att.Descriptor.Digest, att.Report.Scanner, newer.Digest)
	}
	// Grype's SARIF has no time of its own: the annotation dates it.
	if !att.Report.CreatedAt.Equal(t0.Add(2 * time.Hour)) {
		t.Fatalf("report CreatedAt %v", att.Report.CreatedAt)
	}
	// Newest first: the newer signature and SBOM (this registry lists
	// artifacts by config media type, so both must be looked into) and the
	// chosen report are read; older reports are not.
	if n := tr.reg.manifestFetchs.Load(); n != 3 {
		t.Fatalf("fetched %d manifests, want 3", n)
	}

	res := va.Evaluate(att.Report, va.Options{MaxSeverity: va.SeverityHigh}, "team-a", t0.Add(3*time.Hour))
	if res.Pass || !strings.Contains(res.Reason, "(grype 0.58.1, 1h old) has 1 finding above max_severity high: CVE-2024-0001 (critical, openssl 3.0.2)") {
		t.Fatalf("evaluation: %+v", res.Reason)
	}
}

func TestReferrersUndatedByContentTime(t *testing.T) {
	tr := newTestRegistry(t)
	tr.attach(tr.subject, styleOras11, va.MediaTypeSARIF, vatest.TrivySARIF(scanAt(t0, critVuln)), t0)
	undated := tr.attach(tr.subject, styleConfigType, va.MediaTypeJSON, vatest.CosignVuln(scanAt(t0.Add(time.Hour), lowVuln)), time.Time{})
	tr.attach(tr.subject, styleOras11, va.MediaTypeTrivyJSON, vatest.TrivyJSON(scanAt(time.Time{}, critVuln)), time.Time{}) // undated everywhere

	att, err := va.NewReferrersSource(va.ReferrersOptions{}).Report(context.Background(), tr.query(false))
	if err != nil {
		t.Fatal(err)
	}
	if att.Descriptor.Digest != undated.Digest || !att.Created.Equal(t0.Add(time.Hour)) {
		t.Fatalf("got %s created %v, want %s by its content time", att.Descriptor.Digest, att.Created, undated.Digest)
	}
}

func TestReferrersSigned(t *testing.T) {
	ctx := context.Background()
	tr := newTestRegistry(t)
	signed := tr.attach(tr.subject, styleOras11, va.MediaTypeSARIF, vatest.TrivySARIF(scanAt(t0, lowVuln)), t0)
	unsigned := tr.attach(tr.subject, styleOras11, va.MediaTypeSARIF, vatest.TrivySARIF(scanAt(t0.Add(time.Hour))), t0.Add(time.Hour))

	v := &signedSet{signed: map[digest.Digest]bool{signed.Digest: true}}
	src := va.NewReferrersSource(va.ReferrersOptions{Verifier: v})
	att, err := src.Report(ctx, tr.query(true))
	if err != nil {
		t.Fatal(err)
	}
	if att.Descriptor.Digest != signed.Digest || att.Signer != "scanner" {
		t.Fatalf("got %s signer %q, want the older signed report %s", att.Descriptor.Digest, att.Signer, signed.Digest)
	}
	// Without the requirement the newer unsigned one wins and nothing is verified.
	v.calls.Store(0)
	att, err = src.Report(ctx, tr.query(false))
	if err != nil || att.Descriptor.Digest != unsigned.Digest || v.calls.Load() != 0 {
		t.Fatalf("got %v, %v, %d verifications", att, err, v.calls.Load())
	}

	// Nothing signed: untrusted, not "unscanned", and the reason names the report.
	v.signed = nil
	_, err = src.Report(ctx, tr.query(true))
	if !errors.Is(err, va.ErrUntrustedReport) || errors.Is(err, va.ErrNoReport) || !strings.Contains(err.Error(), unsigned.Digest.String()) || !errors.Is(err, va.ErrNotSigned) {
		t.Fatalf("got %v", err)
	}

	// The verifier failing to work aborts rather than skipping.
	infra := errors.New("registry unavailable")
	v.err = infra
	if _, err = src.Report(ctx, tr.query(true)); !errors.Is(err, infra) || errors.Is(err, va.ErrUntrustedReport) {
		t.Fatalf("got %v", err)
	}

	// Requiring a signature without a verifier is a configuration error, not a pass.
	if _, err = va.NewReferrersSource(va.ReferrersOptions{}).Report(ctx, tr.query(true)); err == nil {
		t.Fatal("signed report required without verifier: no error")
	}
}

func TestReferrersNoReport(t *testing.T) {
	tr := newTestRegistry(t)
	src := va.NewReferrersSource(va.ReferrersOptions{})
	if _, err := src.Report(context.Background(), tr.query(false)); !errors.Is(err, va.ErrNoReport) {
		t.Fatalf("no referrers: got %v", err)
	}
	tr.attach(tr.subject, styleOras11, "application/vnd.cncf.notary.signature", []byte("sig"), t0)
	tr.attach(tr.subject, styleOras11, va.MediaTypeCycloneDX, []byte(`{"bomFormat":"CycloneDX"}`), t0)
	tr.attach(tr.subject, styleConfigType, va.MediaTypeJSON, []byte(`{"some":"other json"}`), t0)
	if _, err := src.Report(context.Background(), tr.query(false)); !errors.Is(err, va.ErrNoReport) {
		t.Fatalf("only non-report referrers: got %v", err)
	}
}

func TestReferrersBounds(t *testing.T) {
	ctx := context.Background()
	t.Run("report larger than max_report_bytes", func(t *testing.T) {
		tr := newTestRegistry(t)
		tr.attach(tr.subject, styleOras11, va.MediaTypeSARIF, vatest.TrivySARIF(scanAt(t0, critVuln, lowVuln)), t0)
		tr.reg.blobFetches.Store(0)
		_, err := va.NewReferrersSource(va.ReferrersOptions{MaxReportBytes: 1024}).Report(ctx, tr.query(false))
		if !errors.Is(err, va.ErrMalformedReport) || !strings.Contains(err.Error(), "max_report_bytes is 1024") {
			t.Fatalf("got %v", err)
		}
		if n := tr.reg.blobFetches.Load(); n != 0 {
			t.Fatalf("fetched %d blobs of an oversized report", n)
		}
	})
	t.Run("candidates bounded, newest examined", func(t *testing.T) {
		tr := newTestRegistry(t)
		for i := range 5 {
			tr.attach(tr.subject, styleOras11, va.MediaTypeSARIF, vatest.TrivySARIF(scanAt(t0.Add(time.Duration(i)*time.Hour))), t0.Add(time.Duration(i)*time.Hour))
		}
		v := &signedSet{}
		_, err := va.NewReferrersSource(va.ReferrersOptions{Verifier: v, MaxCandidates: 2}).Report(ctx, tr.query(true))
		if !errors.Is(err, va.ErrUntrustedReport) || v.calls.Load() != 2 || tr.reg.manifestFetchs.Load() != 2 {
			t.Fatalf("got %v after %d verifications, %d manifest fetches; want 2 each", err, v.calls.Load(), tr.reg.manifestFetchs.Load())
		}
	})
	t.Run("a flood of non-report artifacts does not make the image unscanned", func(t *testing.T) {
		tr := newTestRegistry(t)
		tr.attach(tr.subject, styleOras11, va.MediaTypeSARIF, vatest.TrivySARIF(scanAt(t0, critVuln)), t0)
		for i := range 3 {
			tr.attach(tr.subject, styleConfigType, va.MediaTypeJSON, []byte(`{"junk":true}`), t0.Add(time.Duration(i+1)*time.Hour))
		}
		_, err := va.NewReferrersSource(va.ReferrersOptions{MaxCandidates: 3}).Report(ctx, tr.query(false))
		if !errors.Is(err, va.ErrUntrustedReport) || errors.Is(err, va.ErrNoReport) || !strings.Contains(err.Error(), "only the newest 3") {
			t.Fatalf("got %v", err)
		}
		att, err := va.NewReferrersSource(va.ReferrersOptions{MaxCandidates: 4}).Report(ctx, tr.query(false))
		if err != nil || len(att.Report.Findings) != 1 {
			t.Fatalf("with room for it: %v, %v", att, err)
		}
	})
	t.Run("malformed newest report denies", func(t *testing.T) {
		tr := newTestRegistry(t)
		tr.attach(tr.subject, styleOras11, va.MediaTypeSARIF, vatest.TrivySARIF(scanAt(t0)), t0)
		bad := tr.attach(tr.subject, styleOras11, va.MediaTypeSARIF, []byte(`{"version":"2.1.0","runs":[{"results":[{`), t0.Add(time.Hour))
		_, err := va.NewReferrersSource(va.ReferrersOptions{}).Report(ctx, tr.query(false))
		if !errors.Is(err, va.ErrMalformedReport) || !strings.Contains(err.Error(), bad.Digest.String()) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("registry down", func(t *testing.T) {
		tr := newTestRegistry(t)
		tr.srv.Close()
		_, err := va.NewReferrersSource(va.ReferrersOptions{}).Report(ctx, tr.query(false))
		if err == nil || errors.Is(err, va.ErrNoReport) || errors.Is(err, va.ErrUntrustedReport) {
			t.Fatalf("got %v", err)
		}
	})
}

// lyingListing wraps a real registry and edits what its referrers listing
// says, as anyone with push rights can by rewriting a tag-schema index.
type lyingListing struct {
	va.Registry
	edit func([]ocispec.Descriptor) []ocispec.Descriptor
}

func (l lyingListing) Referrers(ctx context.Context, s ocispec.Descriptor, at string) ([]ocispec.Descriptor, error) {
	ds, err := l.Registry.Referrers(ctx, s, at)
	return l.edit(ds), err
}

func TestReferrersDistrustsListing(t *testing.T) {
	ctx := context.Background()
	t.Run("report of another image listed as referrer", func(t *testing.T) {
		tr := newTestRegistry(t)
		other := tr.manifest(ocispec.Manifest{Config: tr.blob(ocispec.MediaTypeImageConfig, []byte(`{"os":"linux"}`)), Layers: []ocispec.Descriptor{}})
		foreign := tr.attach(other, styleOras11, va.MediaTypeSARIF, vatest.TrivySARIF(scanAt(t0)), t0)
		q := tr.query(false)
		q.Image.Registry = lyingListing{tr.reg, func(ds []ocispec.Descriptor) []ocispec.Descriptor { return append(ds, foreign) }}
		_, err := va.NewReferrersSource(va.ReferrersOptions{}).Report(ctx, q)
		if !errors.Is(err, va.ErrUntrustedReport) || !strings.Contains(err.Error(), "is not about") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("listing dates contradict manifests", func(t *testing.T) {
		tr := newTestRegistry(t)
		old := tr.attach(tr.subject, styleOras11, va.MediaTypeSARIF, vatest.TrivySARIF(scanAt(t0)), t0)
		newest := tr.attach(tr.subject, styleOras11, va.MediaTypeSARIF, vatest.TrivySARIF(scanAt(t0.Add(time.Hour), critVuln)), t0.Add(time.Hour))
		q := tr.query(false)
		q.Image.Registry = lyingListing{tr.reg, func(ds []ocispec.Descriptor) []ocispec.Descriptor {
			for i := range ds {
				if ds[i].Digest == old.Digest {
					ds[i].Annotations = map[string]string{ocispec.AnnotationCreated: t0.Add(9 * time.Hour).Format(time.RFC3339)}
				}
			}
			return ds
		}}
		att, err := va.NewReferrersSource(va.ReferrersOptions{}).Report(ctx, q)
		if err != nil || att.Descriptor.Digest != newest.Digest {
			t.Fatalf("got %v, %v; want %s", att, err, newest.Digest)
		}
	})
}

func TestReferrersTagSchema(t *testing.T) {
	tr := newTestRegistryAPI(t, false)
	tr.attach(tr.subject, styleOras11, va.MediaTypeSARIF, vatest.TrivySARIF(scanAt(t0, critVuln)), t0)
	newest := tr.attach(tr.subject, styleConfigType, va.MediaTypeTrivyJSON, vatest.TrivyJSON(scanAt(t0.Add(time.Hour), lowVuln)), t0.Add(time.Hour))
	// A fresh client, so the listing really comes from the tag-schema index.
	repo, err := remote.NewRepository(tr.repo.Reference.String())
	if err != nil {
		t.Fatal(err)
	}
	repo.PlainHTTP = true
	q := tr.query(false)
	q.Image.Registry = &orasRegistry{repo: repo}
	att, err := va.NewReferrersSource(va.ReferrersOptions{}).Report(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	if att.Descriptor.Digest != newest.Digest || len(att.Report.Findings) != 1 {
		t.Fatalf("got %s, want %s", att.Descriptor.Digest, newest.Digest)
	}
}
