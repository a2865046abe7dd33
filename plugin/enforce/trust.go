package enforce

import (
	"context"
	"errors"
	"fmt"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pullguard/pullguard/plugin/registry"
	"github.com/pullguard/pullguard/plugin/trust"
	"github.com/pullguard/pullguard/plugin/va"
)

// RepositoryOpener opens an image's repository for one decision, asking
// for each endpoint's credentials as containerd does (mirrors included).
type RepositoryOpener interface {
	RepositoryWith(ctx context.Context, ref reference.Named, creds registry.CredentialFunc) (*registry.Repository, error)
}

// TrustVerifier establishes which configured signers signed a digest.
type TrustVerifier interface {
	VerifyFrom(ctx context.Context, src trust.SignatureSource, ref reference.Named, desc ocispec.Descriptor) (*trust.Facts, error)
	TrustMaterialHash() string
}

// Facts is what was established about one image digest: which signers
// signed it, or which scan report vouches for it. Policy-independent, so a
// decision is policy × facts and a policy change applies at once.
type Facts struct {
	Trust  *trust.Facts `json:"trust,omitempty"`
	Report *va.Attested `json:"report,omitempty"`
	// NoReport records that no usable scan report was found: "" when one
	// was, else why not (no report attached, or the reports there are
	// unsigned, untrusted or malformed). It is a fact about the registry's
	// content like any other, so a decision from cached facts can use it.
	NoReport string `json:"no_report,omitempty"`
	// NoReportKind is the va error class behind NoReport.
	NoReportKind string `json:"no_report_kind,omitempty"`
	// Absent records that the registry answered it does not hold the
	// content in the repository (an image loaded or re-tagged on the node):
	// nothing there can vouch for it.
	Absent string `json:"absent,omitempty"`
}

// Negative reports whether the facts say nothing was found to vouch for the
// content (no valid signature from any signer, no usable scan report): what
// a signing or scanning pipeline may change a moment later.
func (f *Facts) Negative() bool {
	return (f.Trust != nil && len(f.Trust.VerifiedSigners) == 0) || f.NoReport != "" || f.Absent != ""
}

// absent turns the registry's "not found" for the subject into a fact, and
// passes any other error on.
func absent(s *subject, err error) (*Facts, error) {
	if errors.Is(err, registry.ErrNotFound) {
		return &Facts{Absent: fmt.Sprintf("the registry does not hold %s@%s", s.repo, s.desc.Digest)}, nil
	}
	return nil, err
}

// absentFailure is the denial for content its registry does not hold.
func absentFailure(f *Facts) *failure {
	return &failure{category: SignatureValidationFailed, reason: f.Absent +
		": it was loaded or re-tagged on this node, so nothing can vouch for it; pull it from its registry (imagePullPolicy: Always)"}
}

// FactsCache keeps facts by content (digest and trust material, never a
// tag) and coalesces identical verifications in flight. A nil cache
// verifies every time.
type FactsCache interface {
	Do(ctx context.Context, key string, fn func(ctx context.Context) (*Facts, error)) (*Facts, bool, error)
	// Get returns the live facts under key without computing them.
	Get(key string) (*Facts, bool)
	// Refresh computes the facts again and stores them on success.
	Refresh(ctx context.Context, key string, fn func(ctx context.Context) (*Facts, error)) (*Facts, error)
}

// subject is the resolved image every check looks at.
type subject struct {
	name reference.Named // normalised, with the tag or digest asked for
	repo reference.Named // name without tag or digest: the signatures' scope
	desc ocispec.Descriptor
	// src reaches the repository with the request's credentials; one
	// handle per decision so the registry token is fetched once.
	src *registry.Repository
	// lazy: only desc.Digest is known (create time); complete fetches the rest.
	lazy bool
	// fresh: establish the facts again, whatever is cached.
	fresh bool
}

// resolve pins the image to a digest once per decision, so that trust and VA
// look at the same content and the pull fetches exactly that content.
func (e *Engine) resolve(ctx context.Context, req Request, name reference.Named) (*subject, *failure) {
	if req.CachedOnly {
		// Decided from what is already known about the content: nothing is
		// fetched, so no repository handle is needed.
		d := digest.Digest(req.Digest)
		if err := d.Validate(); err != nil {
			return nil, &failure{category: SignatureValidationFailed, reason: fmt.Sprintf("image digest %q on the node is invalid: %v", req.Digest, err)}
		}
		return &subject{name: name, repo: reference.TrimNamed(name), desc: ocispec.Descriptor{Digest: d}, lazy: true}, nil
	}
	if e.opts.Registry == nil {
		return nil, &failure{category: SignatureValidationFailed, reason: "no registry access is configured to resolve the image"}
	}
	src, err := e.opts.Registry.RepositoryWith(ctx, name, e.credentials(req))
	if err != nil {
		return nil, registryFailure(fmt.Sprintf("open repository %s", reference.TrimNamed(name)), err)
	}
	s := &subject{name: name, repo: reference.TrimNamed(name), src: src, fresh: req.Fresh}
	if req.Digest != "" {
		// Create time: the content on the node is what must be checked,
		// whatever the tag points at now. Its full descriptor is fetched
		// only if something is not already known about it.
		d := digest.Digest(req.Digest)
		if err := d.Validate(); err != nil {
			return nil, &failure{category: SignatureValidationFailed, reason: fmt.Sprintf("image digest %q on the node is invalid: %v", req.Digest, err)}
		}
		s.desc, s.lazy = ocispec.Descriptor{Digest: d}, true
		return s, nil
	}
	if s.desc, _, err = src.ResolveManifest(ctx, name); err != nil {
		// The registry client's error already names the reference.
		return nil, registryFailure("", err)
	}
	return s, nil
}

// credentials are the request's for a host, else the node's own.
func (e *Engine) credentials(req Request) registry.CredentialFunc {
	switch {
	case e.opts.NodeCredentials == nil:
		return req.Credentials
	case req.Credentials == nil:
		return e.opts.NodeCredentials
	}
	return func(host, repository string) *registry.Credentials {
		if c := req.Credentials(host, repository); c != nil {
			return c
		}
		return e.opts.NodeCredentials(host, repository)
	}
}

// complete fetches the descriptor of a subject known only by digest.
func (e *Engine) complete(ctx context.Context, s *subject) error {
	if !s.lazy {
		return nil
	}
	ref, err := reference.WithDigest(s.repo, s.desc.Digest)
	if err != nil {
		return err
	}
	desc, err := s.src.Resolve(ctx, ref)
	if err != nil {
		return err
	}
	if desc.Digest != s.desc.Digest {
		return fmt.Errorf("registry answered %s for %s: %w", desc.Digest, ref, registry.ErrIntegrity)
	}
	s.desc, s.lazy = desc, false
	return nil
}

// checkTrust returns why the image's signatures do not satisfy the rule.
func (e *Engine) checkTrust(ctx context.Context, s *subject, required []string, d *Decision) *failure {
	if e.opts.Trust == nil {
		return &failure{category: SignatureValidationFailed, reason: "the rule requires signatures but no signers are configured on this node"}
	}
	verify := func(ctx context.Context) (*Facts, error) {
		if err := e.complete(ctx, s); err != nil {
			return absent(s, err)
		}
		f, err := e.opts.Trust.VerifyFrom(ctx, s.src, s.repo, s.desc)
		if err != nil {
			return nil, err
		}
		return &Facts{Trust: f}, nil
	}
	// Signatures live in a repository, so the repository is part of the
	// key along with the content and the trust material.
	key := "trust\x00" + s.repo.String() + "\x00" + s.desc.Digest.String() + "\x00" + e.opts.Trust.TrustMaterialHash()
	got, f, err := e.facts(ctx, s, key, verify)
	if f != nil {
		return f
	}
	if err == nil && got.Absent != "" {
		return absentFailure(got)
	}
	if err == nil && got.Trust == nil {
		err = errors.New("cached facts hold no signature facts")
	}
	if err != nil {
		return registryFailure(fmt.Sprintf("verify signatures of %s@%s", s.repo, s.desc.Digest), err)
	}
	facts := got.Trust
	d.Details = append(d.Details, facts.Explain()...)
	if unmet := facts.Unmet(required); unmet != "" {
		return &failure{category: SignatureValidationFailed, reason: unmet}
	}
	return nil
}

// failure is why a check did not pass.
type failure struct {
	category Category
	reason   string
	// notVerified: the decision was made from cached facts and the facts it
	// needs are not known yet.
	notVerified bool
}

// registryFailure classifies a registry error: could not ask (fail closed
// with RegistryUnavailable) versus asked and was refused.
func registryFailure(what string, err error) *failure {
	if what == "" {
		what = "registry"
	}
	switch {
	case errors.Is(err, registry.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return &failure{category: RegistryUnavailable, reason: fmt.Sprintf("%s: %v", what, err)}
	case errors.Is(err, registry.ErrUnauthorized):
		return &failure{category: SignatureValidationFailed, reason: fmt.Sprintf("%s: the registry refused access (%v); the pod's imagePullSecrets must grant it", what, err)}
	case errors.Is(err, registry.ErrNotFound):
		return &failure{category: SignatureValidationFailed, reason: fmt.Sprintf("%s: not found in the registry", what)}
	}
	return &failure{category: SignatureValidationFailed, reason: fmt.Sprintf("%s: %v", what, err)}
}

// facts returns the facts under key: computed with fn (at most once for
// identical keys in flight), or, for a decision from cached facts only, as
// cached, with a "not verified yet" failure when nothing is.
func (e *Engine) facts(ctx context.Context, s *subject, key string, fn func(ctx context.Context) (*Facts, error)) (*Facts, *failure, error) {
	if s.src == nil {
		if e.opts.Facts != nil {
			if got, ok := e.opts.Facts.Get(key); ok {
				return got, nil, nil
			}
		}
		return nil, &failure{category: SignatureValidationFailed, notVerified: true, reason: fmt.Sprintf(
			"pullguard has not verified %s@%s on this node yet; it is verifying it now, and a retry is decided on the result", s.repo, s.desc.Digest)}, nil
	}
	if e.opts.Facts == nil {
		got, err := fn(ctx)
		return got, nil, err
	}
	if s.fresh {
		got, err := e.opts.Facts.Refresh(ctx, key, fn)
		return got, nil, err
	}
	got, _, err := e.opts.Facts.Do(ctx, key, fn)
	return got, nil, err
}
