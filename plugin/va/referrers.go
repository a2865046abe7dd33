package va

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Defaults for ReferrersOptions.
const (
	DefaultMaxReportBytes = 8 << 20
	DefaultMaxCandidates  = 8
)

// annotationArtifactCreated is the creation annotation of the withdrawn OCI
// artifact manifest, still written by trivy's referrer plugin.
const annotationArtifactCreated = "org.opencontainers.artifact.created"

// ReferrersOptions configures a ReferrersSource.
type ReferrersOptions struct {
	// Verifier checks report signatures; required for queries with
	// RequireSigned (they fail without one rather than skip the check).
	Verifier ReportVerifier
	// MaxReportBytes bounds a report blob (va.max_report_bytes).
	MaxReportBytes int64
	// MaxCandidates bounds how many report artifacts are examined per image,
	// newest first: each costs registry round trips and a signature check.
	MaxCandidates int
	Log           *slog.Logger
}

// ReferrersSource reads scan reports attached to the image digest as OCI
// referrers (SPEC §4): artifacts whose artifactType, or config media type,
// is one of ReportMediaTypes.
type ReferrersSource struct {
	opts ReferrersOptions
}

// NewReferrersSource returns a source with opts' zero values defaulted.
func NewReferrersSource(opts ReferrersOptions) *ReferrersSource {
	if opts.MaxReportBytes <= 0 {
		opts.MaxReportBytes = DefaultMaxReportBytes
	}
	if opts.MaxCandidates <= 0 {
		opts.MaxCandidates = DefaultMaxCandidates
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &ReferrersSource{opts: opts}
}

type candidate struct {
	desc  ocispec.Descriptor
	at    time.Time // from the listing's annotations; zero if none
	dated bool
}

// Report returns the newest report attached to q.Image.Subject that passes
// q's trust requirement. Newest is decided by the artifact's creation
// annotation (org.opencontainers.image.created, or the older
// org.opencontainers.artifact.created), else the report content's own time.
func (s *ReferrersSource) Report(ctx context.Context, q Query) (*Attested, error) {
	img := q.Image
	if img.Registry == nil {
		return nil, errors.New("referrers source: image has no registry access")
	}
	if q.RequireSigned && s.opts.Verifier == nil {
		return nil, errors.New("referrers source: a signed report is required but no report verifier is configured")
	}
	refs, err := img.Registry.Referrers(ctx, img.Subject, "")
	if err != nil {
		return nil, fmt.Errorf("list reports of %s: %w", img.Subject.Digest, err)
	}

	var cands []candidate
	for _, d := range refs {
		// Registries without artifactType support (and go-containerregistry's
		// test registry) report the config media type, which for artifacts
		// packed the OCI 1.1 way is the empty config: look inside those.
		if !IsReportMediaType(d.ArtifactType) && d.ArtifactType != "" && d.ArtifactType != ocispec.MediaTypeEmptyJSON {
			continue
		}
		at, ok := createdAnnotation(d.Annotations)
		cands = append(cands, candidate{desc: d, at: at, dated: ok})
	}
	// Newest first; undated last, in listing order.
	slices.SortStableFunc(cands, func(a, b candidate) int {
		if a.dated != b.dated {
			if a.dated {
				return -1
			}
			return 1
		}
		return b.at.Compare(a.at)
	})
	truncated := len(cands) > s.opts.MaxCandidates
	if truncated {
		s.opts.Log.WarnContext(ctx, "too many report artifacts, examining the newest only",
			"subject", img.Subject.Digest.String(), "found", len(cands), "max", s.opts.MaxCandidates)
		cands = cands[:s.opts.MaxCandidates]
	}

	var (
		best       *Attested
		exhaustive bool // the listing's dates proved unreliable: examine everything
		rejected   []error
	)
	for _, c := range cands {
		// Once a dated candidate is accepted, older dated ones cannot win;
		// undated ones might (by content time), so they are still read.
		if best != nil && c.dated && !exhaustive {
			continue
		}
		att, listedAt, err := s.examine(ctx, q, c.desc)
		switch {
		case errors.Is(err, errNotAReport):
			continue
		case errors.Is(err, errRejected):
			rejected = append(rejected, err)
			continue
		case err != nil:
			return nil, err
		}
		if c.dated && !listedAt.Equal(c.at) {
			// The listing (a tag-schema index anyone with push rights can
			// rewrite) disagrees with the signed manifest about dates.
			exhaustive = true
		}
		if best == nil || att.Created.After(best.Created) {
			best = att
		}
	}
	switch {
	case best != nil:
		return best, nil
	case len(rejected) > 0:
		return nil, fmt.Errorf("%w for %s: %w", ErrUntrustedReport, img.Subject.Digest, errors.Join(rejected...))
	case truncated:
		// Unexamined artifacts may hold the report: "unscanned" cannot be
		// concluded, or flooding an image with junk referrers would turn a
		// bad report into unscanned = "allow".
		return nil, fmt.Errorf("%w for %s: only the newest %d of the report-like artifacts were examined and none is a report",
			ErrUntrustedReport, img.Subject.Digest, s.opts.MaxCandidates)
	default:
		return nil, fmt.Errorf("%w for %s", ErrNoReport, img.Subject.Digest)
	}
}

var (
	errNotAReport = errors.New("not a report artifact")
	errRejected   = errors.New("rejected")
)

// examine reads one candidate. It returns errNotAReport for artifacts that
// turn out not to be reports, an error wrapping errRejected for reports that
// do not qualify, and other errors for failures that must stop the lookup.
// listedAt is the creation annotation of the fetched (digest-verified) manifest.
func (s *ReferrersSource) examine(ctx context.Context, q Query, desc ocispec.Descriptor) (att *Attested, listedAt time.Time, err error) {
	img := q.Image
	raw, err := img.Registry.FetchManifest(ctx, desc)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("fetch report manifest %s: %w", desc.Digest, err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, time.Time{}, fmt.Errorf("%w: report manifest %s: %w", errRejected, desc.Digest, err)
	}
	artifactType := cmp.Or(m.ArtifactType, m.Config.MediaType)
	if !IsReportMediaType(artifactType) {
		return nil, time.Time{}, errNotAReport
	}
	// The listing claims this is a referrer of the image; only the manifest
	// (which a signature covers) can say so.
	if m.Subject == nil || m.Subject.Digest != img.Subject.Digest {
		return nil, time.Time{}, fmt.Errorf("%w: report %s is not about %s", errRejected, desc.Digest, img.Subject.Digest)
	}

	signer := ""
	if q.RequireSigned {
		signer, err = s.opts.Verifier.VerifyReport(ctx, img, desc)
		if errors.Is(err, ErrNotSigned) {
			return nil, time.Time{}, fmt.Errorf("%w: report %s: %w", errRejected, desc.Digest, err)
		}
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("verify report %s: %w", desc.Digest, err)
		}
	}

	layer, mediaType, ok := reportLayer(m, artifactType)
	if !ok {
		return nil, time.Time{}, fmt.Errorf("%w: report %s has no %s layer", ErrMalformedReport, desc.Digest, artifactType)
	}
	if layer.Size < 0 || layer.Size > s.opts.MaxReportBytes {
		return nil, time.Time{}, fmt.Errorf("%w: report %s is %d bytes, max_report_bytes is %d", ErrMalformedReport, desc.Digest, layer.Size, s.opts.MaxReportBytes)
	}
	data, err := img.Registry.FetchBlob(ctx, layer)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("fetch report %s blob %s: %w", desc.Digest, layer.Digest, err)
	}
	rep, err := ParseReport(mediaType, data)
	switch {
	case errors.Is(err, ErrNotVulnerabilityReport), errors.Is(err, ErrUnknownFormat):
		return nil, time.Time{}, errNotAReport
	case err != nil:
		return nil, time.Time{}, fmt.Errorf("%w: report %s: %w", ErrMalformedReport, desc.Digest, err)
	}

	created, _ := createdAnnotation(m.Annotations)
	if rep.CreatedAt.IsZero() {
		rep.CreatedAt = created
	}
	return &Attested{
		Report:     rep,
		Source:     "referrers",
		Descriptor: desc,
		MediaType:  mediaType,
		Created:    cmp.Or(created, rep.CreatedAt),
		Signer:     signer,
	}, created, nil
}

// reportLayer picks the report blob: the first layer with a report media
// type, else the only layer of an artifact whose type says report (oras
// attach without an explicit media type stores files as generic layers).
func reportLayer(m ocispec.Manifest, artifactType string) (ocispec.Descriptor, string, bool) {
	for _, l := range m.Layers {
		if IsReportMediaType(l.MediaType) {
			return l, l.MediaType, true
		}
	}
	if len(m.Layers) == 1 {
		return m.Layers[0], artifactType, true
	}
	return ocispec.Descriptor{}, "", false
}

func createdAnnotation(a map[string]string) (time.Time, bool) {
	for _, k := range []string{ocispec.AnnotationCreated, annotationArtifactCreated} {
		if v, ok := a[k]; ok {
			if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
				return t, true
			}
		}
	}
	return time.Time{}, false
}
