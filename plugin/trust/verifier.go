package trust

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/distribution/reference"
	"github.com/notaryproject/notation-core-go/revocation"
	"github.com/notaryproject/notation-core-go/revocation/crl"
	"github.com/notaryproject/notation-core-go/revocation/purpose"
	"github.com/notaryproject/notation-core-go/signature"
	_ "github.com/notaryproject/notation-core-go/signature/cose" // registers the COSE envelope
	_ "github.com/notaryproject/notation-core-go/signature/jws"  // registers the JWS envelope
	"github.com/notaryproject/notation-go"
	notationregistry "github.com/notaryproject/notation-go/registry"
	"github.com/notaryproject/notation-go/verifier"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pullguard/pullguard/plugin/registry"
)

const (
	mediaTypeJWS  = "application/jose+json"
	mediaTypeCOSE = "application/cose"
	// ArtifactTypeSignature is the artifact type of notation signatures.
	ArtifactTypeSignature = notationregistry.ArtifactTypeNotation

	DefaultMaxSignatures     = 16
	DefaultRevocationTimeout = 5 * time.Second
)

// SignatureSource is the registry access verification needs; a
// *registry.Repository provides it.
type SignatureSource interface {
	Referrers(ctx context.Context, subject ocispec.Descriptor, artifactType string) ([]ocispec.Descriptor, error)
	FetchManifest(ctx context.Context, desc ocispec.Descriptor) ([]byte, error)
	FetchBlob(ctx context.Context, desc ocispec.Descriptor) ([]byte, error)
}

// Options configure a Verifier.
type Options struct {
	Signers       []*LoadedSigner
	Registry      *registry.Client // for Verify; VerifyFrom needs none
	MaxSignatures int              // signatures examined per digest; default 16
	// RevocationTimeout bounds each OCSP/CRL request (strict and permissive
	// signers only). Default 5s.
	RevocationTimeout time.Duration
	Logger            *slog.Logger
}

// Verifier checks signatures on image digests. Safe for concurrent use.
type Verifier struct {
	signers       []*LoadedSigner
	reg           *registry.Client
	maxSignatures int
	log           *slog.Logger
	hash          string
	names         []string
	codeSigning   revocation.Validator
	timestamping  revocation.Validator
}

// NewVerifier builds a verifier for a set of loaded signers.
func NewVerifier(opts Options) (*Verifier, error) {
	if opts.MaxSignatures < 0 || opts.RevocationTimeout < 0 {
		return nil, errors.New("trust options: negative bound")
	}
	if opts.MaxSignatures == 0 {
		opts.MaxSignatures = DefaultMaxSignatures
	}
	if opts.RevocationTimeout == 0 {
		opts.RevocationTimeout = DefaultRevocationTimeout
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	v := &Verifier{
		signers:       slices.Clone(opts.Signers),
		reg:           opts.Registry,
		maxSignatures: opts.MaxSignatures,
		log:           logger,
		hash:          TrustMaterialHash(opts.Signers),
	}
	for _, s := range v.signers {
		v.names = append(v.names, s.Name)
	}
	sort.Strings(v.names)
	httpClient := &http.Client{Timeout: opts.RevocationTimeout}
	fetcher, err := crl.NewHTTPFetcher(httpClient)
	if err != nil {
		return nil, fmt.Errorf("CRL fetcher: %w", err)
	}
	if v.codeSigning, err = revocation.NewWithOptions(revocation.Options{OCSPHTTPClient: httpClient, CRLFetcher: fetcher, CertChainPurpose: purpose.CodeSigning}); err != nil {
		return nil, fmt.Errorf("revocation validator: %w", err)
	}
	if v.timestamping, err = revocation.NewWithOptions(revocation.Options{OCSPHTTPClient: httpClient, CRLFetcher: fetcher, CertChainPurpose: purpose.Timestamping}); err != nil {
		return nil, fmt.Errorf("revocation validator: %w", err)
	}
	return v, nil
}

// Signers returns the configured signer names, sorted.
func (v *Verifier) Signers() []string { return slices.Clone(v.names) }

// TrustMaterialHash identifies the verifier's trust material (see the
// package function).
func (v *Verifier) TrustMaterialHash() string { return v.hash }

// Verify reads the signatures on desc (an image manifest or index in the
// repository of ref) with creds and verifies each against every signer.
// An error means no facts could be established: it wraps
// registry.ErrUnavailable when the registry could not be reached (the caller
// must fail closed with "RegistryUnavailable:"), registry.ErrUnauthorized when
// it refused the credentials. Rejected signatures are not errors: they are in
// the facts with their reason.
func (v *Verifier) Verify(ctx context.Context, ref reference.Named, desc ocispec.Descriptor, creds *registry.Credentials) (*Facts, error) {
	if v.reg == nil {
		return nil, errors.New("verify: no registry client configured")
	}
	repo, err := v.reg.Repository(ctx, ref, creds)
	if err != nil {
		return nil, fmt.Errorf("verify %s@%s: %w", ref.Name(), desc.Digest, err)
	}
	return v.VerifyFrom(ctx, repo, ref, desc)
}

// VerifyFrom is Verify reading from src (e.g. the registry.Repository the
// caller resolved the image with, reusing its token).
func (v *Verifier) VerifyFrom(ctx context.Context, src SignatureSource, ref reference.Named, desc ocispec.Descriptor) (*Facts, error) {
	scope := reference.TrimNamed(ref).String()
	facts := &Facts{
		Repository:        scope,
		Digest:            desc.Digest,
		CheckedAt:         time.Now(),
		TrustMaterialHash: v.hash,
		ConfiguredSigners: slices.Clone(v.names),
	}
	if len(v.signers) == 0 {
		return facts, nil // nothing can verify; Unmet says so
	}
	sigs, err := src.Referrers(ctx, desc, ArtifactTypeSignature)
	if err != nil {
		return nil, fmt.Errorf("list signatures of %s@%s: %w", scope, desc.Digest, err)
	}
	facts.SignaturesFound = len(sigs)
	if len(sigs) > v.maxSignatures {
		v.log.WarnContext(ctx, "more signatures than examined", "image", scope+"@"+desc.Digest.String(), "found", len(sigs), "max_signatures", v.maxSignatures)
		sigs = sigs[:v.maxSignatures]
	}
	// Signatures are examined concurrently (a few at a time) so that an
	// image with several signatures costs about one signature's round trips.
	results := make([]SignatureResult, len(sigs))
	errs := make([]error, len(sigs))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, examineParallelism)
	var wg sync.WaitGroup
	for i, sig := range sigs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			res, err := v.examine(ctx, src, scope, desc, sig)
			if err != nil {
				errs[i] = fmt.Errorf("verify %s@%s: signature %s: %w", scope, desc.Digest, sig.Digest, err)
				cancel() // the decision cannot be made; stop the others
				return
			}
			results[i] = res
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, firstError(errs)
	}
	verified := map[string]bool{}
	for _, res := range results {
		for _, s := range res.Signers {
			verified[s] = true
		}
	}
	facts.Signatures = results
	for name := range verified {
		facts.VerifiedSigners = append(facts.VerifiedSigners, name)
	}
	sort.Strings(facts.VerifiedSigners)
	v.log.DebugContext(ctx, "signatures verified", "image", scope+"@"+desc.Digest.String(), "found", facts.SignaturesFound, "verified_signers", facts.VerifiedSigners)
	return facts, nil
}

// signerVerifier is one signer's notation verifier for one signature of one
// decision: a single-statement trust policy scoped to exactly the image's
// repository, so an outcome tells which signer verified. (Built per
// signature because it collects that signature's revocation warnings.)
type signerVerifier struct {
	signer   *LoadedSigner
	nv       notation.Verifier
	warnings *[]string
}

func (v *Verifier) perSignatureVerifiers(scope string) ([]signerVerifier, error) {
	out := make([]signerVerifier, 0, len(v.signers))
	for _, s := range v.signers {
		doc, err := s.policy(scope)
		if err != nil {
			return nil, fmt.Errorf("signer %s: %w", s.Name, err)
		}
		warnings := new([]string)
		nv, err := verifier.NewWithOptions(doc, memoryStore{s}, nil, verifier.VerifierOptions{
			RevocationCodeSigningValidator:  &modeValidator{mode: s.Revocation, inner: v.codeSigning, log: v.log, purpose: "code signing", warnings: warnings},
			RevocationTimestampingValidator: &modeValidator{mode: s.Revocation, inner: v.timestamping, log: v.log, purpose: "timestamping", warnings: warnings},
		})
		if err != nil {
			return nil, fmt.Errorf("signer %s: notation verifier: %w", s.Name, err)
		}
		out = append(out, signerVerifier{signer: s, nv: nv, warnings: warnings})
	}
	return out, nil
}

// examineParallelism bounds the signatures of one image examined at once.
const examineParallelism = 4

// firstError returns the first non-nil error that is not merely the
// cancellation caused by another signature's failure.
func firstError(errs []error) error {
	var first error
	for _, err := range errs {
		if err == nil {
			continue
		}
		if first == nil {
			first = err
		}
		if !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return first
}

// examine fetches one signature and verifies it for every signer. Only an
// unreachable registry is an error; anything wrong with the signature is
// its rejection reason.
func (v *Verifier) examine(ctx context.Context, src SignatureSource, scope string, subject, sigDesc ocispec.Descriptor) (SignatureResult, error) {
	res := SignatureResult{Digest: sigDesc.Digest}
	reject := func(reason string, err error) (SignatureResult, error) {
		if errors.Is(err, registry.ErrUnavailable) {
			return res, err
		}
		res.Reason, res.Err = reason, err.Error()
		return res, nil
	}
	raw, err := src.FetchManifest(ctx, sigDesc)
	if err != nil {
		return reject(fetchReason(err), err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return reject(ReasonMalformed, fmt.Errorf("signature manifest: %w", err))
	}
	if m.Subject == nil || m.Subject.Digest != subject.Digest {
		return reject(ReasonWrongArtifact, errors.New("signature manifest's subject is not this image"))
	}
	if len(m.Layers) != 1 {
		return reject(ReasonMalformed, fmt.Errorf("signature manifest has %d layers, want exactly 1 envelope", len(m.Layers)))
	}
	env := m.Layers[0]
	res.MediaType = env.MediaType
	if env.MediaType != mediaTypeJWS && env.MediaType != mediaTypeCOSE {
		return reject(ReasonMalformed, fmt.Errorf("unsupported signature envelope type %q", env.MediaType))
	}
	blob, err := src.FetchBlob(ctx, env)
	if err != nil {
		return reject(fetchReason(err), err)
	}
	describeSigner(&res, env.MediaType, blob)
	verifiers, err := v.perSignatureVerifiers(scope)
	if err != nil {
		return res, err
	}

	best, bestStage := "", -1
	var bestErr string
	artifactRef := scope + "@" + subject.Digest.String()
	for _, sv := range verifiers {
		outcome, verr := sv.nv.Verify(ctx, subject, blob, notation.VerifierVerifyOptions{ArtifactReference: artifactRef, SignatureMediaType: env.MediaType})
		if verr == nil {
			res.Signers = append(res.Signers, sv.signer.Name)
			res.Warnings = append(res.Warnings, *sv.warnings...)
			continue
		}
		reason, stage := classifyOutcome(outcome, verr, sv.signer)
		if stage > bestStage {
			best, bestStage, bestErr = reason, stage, verr.Error()
		}
	}
	if len(res.Signers) > 0 {
		res.Signer = res.Signers[0]
		return res, nil
	}
	res.Reason, res.Err = best, bestErr
	return res, nil
}

func fetchReason(err error) string {
	if errors.Is(err, registry.ErrIntegrity) {
		return ReasonTampered
	}
	return ReasonMalformed
}

// describeSigner fills in who the envelope claims signed it, read without
// verification so that even a rejected signature can be described.
func describeSigner(res *SignatureResult, mediaType string, blob []byte) {
	env, err := signature.ParseEnvelope(mediaType, blob)
	if err != nil {
		return
	}
	content, err := env.Content()
	if err != nil || len(content.SignerInfo.CertificateChain) == 0 {
		return
	}
	leaf := content.SignerInfo.CertificateChain[0]
	res.Subject = leaf.Subject.String()
	res.Issuer = leaf.Issuer.String()
	res.SigningTime = content.SignerInfo.SignedAttributes.SigningTime
}

// classifyOutcome names the first enforced check that failed. The stage
// orders reasons by how far verification got, so that with several signers
// the most telling rejection is reported (a chain that reached one signer's
// root but failed its identities says more than "untrusted" from the others).
func classifyOutcome(outcome *notation.VerificationOutcome, err error, s *LoadedSigner) (string, int) {
	if outcome != nil {
		for _, r := range outcome.VerificationResults {
			if r == nil || r.Error == nil || r.Action != trustpolicy.ActionEnforce {
				continue
			}
			switch r.Type {
			case trustpolicy.TypeIntegrity:
				return ReasonTampered, 1
			case trustpolicy.TypeAuthenticity:
				// notation reports chain and identity failures under the
				// same type; whether the chain reaches this signer's store
				// tells them apart.
				if outcome.EnvelopeContent != nil {
					if _, cerr := signature.VerifyAuthenticity(&outcome.EnvelopeContent.SignerInfo, s.roots); cerr == nil {
						return ReasonIdentityMismatch, 3
					}
				}
				return ReasonUntrusted, 2
			case trustpolicy.TypeExpiry:
				return ReasonSignatureExpired, 4
			case trustpolicy.TypeAuthenticTimestamp:
				return ReasonCertValidity, 4
			case trustpolicy.TypeRevocation:
				if strings.Contains(r.Error.Error(), "is revoked") {
					return ReasonRevoked, 5
				}
				return ReasonRevocationUnknown, 5
			}
		}
		if outcome.Error != nil && strings.Contains(outcome.Error.Error(), "content descriptor mismatch") {
			return ReasonWrongArtifact, 6
		}
	}
	return ReasonUnverifiable, 0
}
