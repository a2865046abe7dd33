package va

import (
	"context"
	"errors"
	"time"

	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Source finds the newest trustworthy vulnerability report for an image.
//
// Errors a caller must tell apart (all matched with errors.Is):
//   - ErrNoReport: nothing that looks like a report exists for the image.
//     This is the "unscanned" case the policy's unscanned knob decides.
//   - ErrUntrustedReport: reports exist but none qualifies (unsigned while a
//     signature is required, attached to another digest...). The error text
//     lists why each was rejected. Treat as a denial, not as unscanned:
//     otherwise unscanned = "allow" would admit an image whose only report
//     nobody vouches for.
//   - ErrMalformedReport: the report that would be used cannot be read (bad
//     JSON/SARIF, over max_report_bytes). Deny with the message.
//   - anything else: the source could not be asked (registry or scanner API
//     unavailable, context expired); registry errors keep their class in the
//     chain so the caller can report RegistryUnavailable or fail open.
type Source interface {
	Report(ctx context.Context, q Query) (*Attested, error)
}

var (
	ErrNoReport        = errors.New("no vulnerability report found")
	ErrUntrustedReport = errors.New("no trustworthy vulnerability report")
	ErrMalformedReport = errors.New("malformed vulnerability report")
	// ErrNotSigned is what a ReportVerifier wraps for every "this report is
	// not vouched for" outcome (no signature, bad signature, unknown signer);
	// any other verifier error aborts the lookup.
	ErrNotSigned = errors.New("report not signed by a scanner signer")
)

// Query asks for the report of one image.
type Query struct {
	Image Image
	// RequireSigned skips reports that no configured scanner signer signed
	// (va.require_signed_report): anyone with push rights could attach a
	// clean report otherwise.
	RequireSigned bool
}

// Image is the pulled image as resolved by the caller.
type Image struct {
	// Name is the image as pulled (repository with tag or digest), for
	// messages and for sources that look images up by name.
	Name reference.Named
	// Subject is the manifest (or index) descriptor the pull resolved to;
	// reports must be about this digest.
	Subject ocispec.Descriptor
	// Registry reaches Name's repository with the pull's credentials; used by
	// ReferrersSource, ignored by sources that do not read the registry.
	Registry Registry
}

// Registry is the registry access ReferrersSource needs, bound to one
// repository and one set of credentials. Implementations must bound sizes
// (manifests and blobs) and verify fetched content against the descriptor's
// digest and size; plugin/registry's Repository does both.
type Registry interface {
	// Referrers lists manifests whose subject is subject, filtered by
	// artifactType ("" for all), from the referrers API or tag schema.
	Referrers(ctx context.Context, subject ocispec.Descriptor, artifactType string) ([]ocispec.Descriptor, error)
	FetchManifest(ctx context.Context, desc ocispec.Descriptor) ([]byte, error)
	FetchBlob(ctx context.Context, desc ocispec.Descriptor) ([]byte, error)
}

// ReportVerifier decides whether a report artifact is vouched for: whether
// the report manifest desc, a referrer of image, carries a valid signature by
// one of the configured scanner signers. It returns that signer's name, or an
// error wrapping ErrNotSigned. The signature covers the manifest, which pins
// the report blob by digest and names the image as subject, so a valid
// signature vouches for exactly this report about exactly this image.
type ReportVerifier interface {
	VerifyReport(ctx context.Context, image Image, desc ocispec.Descriptor) (signer string, err error)
}

// Attested is a report together with where it came from and who vouched for it.
type Attested struct {
	Report *Report
	// Source names the source kind: "referrers", later e.g. "harbor".
	Source string
	// Descriptor is the report artifact's manifest (referrers source).
	Descriptor ocispec.Descriptor
	// MediaType is the media type the report content was parsed as.
	MediaType string
	// Created is the time the report was ordered by: the artifact's creation
	// annotation, else the report content's own time.
	Created time.Time
	// Signer is the scanner signer that signed the report; "" when no
	// signature was required (and none was checked).
	Signer string
}
