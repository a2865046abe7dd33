package enforce

import (
	"context"
	"encoding/json"
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
}

// FactsCache keeps facts by content (digest and trust material, never a
// tag) and coalesces identical verifications in flight. A nil cache
// verifies every time.
type FactsCache interface {
	Do(ctx context.Context, key string, fn func(ctx context.Context) (*Facts, error)) (*Facts, bool, error)
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
}

// resolve pins the image to a digest once per decision, so that trust and VA
// look at the same content and the pull fetches exactly that content.
func (e *Engine) resolve(ctx context.Context, req Request, name reference.Named) (*subject, *failure) {
	if e.opts.Registry == nil {
		return nil, &failure{SignatureValidationFailed, "no registry access is configured to resolve the image"}
	}
	src, err := e.opts.Registry.RepositoryWith(ctx, name, e.credentials(req))
	if err != nil {
		return nil, registryFailure(fmt.Sprintf("open repository %s", reference.TrimNamed(name)), err)
	}
	s := &subject{name: name, repo: reference.TrimNamed(name), src: src}
	if req.Digest != "" {
		// Create time: the content on the node is what must be checked,
		// whatever the tag points at now. Its full descriptor is fetched
		// only if something is not already known about it.
		d := digest.Digest(req.Digest)
		if err := d.Validate(); err != nil {
			return nil, &failure{SignatureValidationFailed, fmt.Sprintf("image digest %q on the node is invalid: %v", req.Digest, err)}
		}
		s.desc, s.lazy = ocispec.Descriptor{Digest: d}, true
		return s, nil
	}
	var body []byte
	if s.desc, body, err = src.ResolveManifest(ctx, name); err != nil {
		// The registry client's error already names the reference.
		return nil, registryFailure("", err)
	}
	if req.ImageID != "" {
		if f := sameAsNode(ctx, s, body, req.ImageID); f != nil {
			return nil, f
		}
	}
	return s, nil
}

// maxIndexChildren bounds the platform manifests fetched to find the node's
// image in an index.
const maxIndexChildren = 64

// sameAsNode checks that the content the registry has under the name is the
// image the node holds (whose ID is its config digest), so that an image
// loaded or re-tagged on the node is not admitted on the strength of the
// registry's content for the same name.
func sameAsNode(ctx context.Context, s *subject, body []byte, imageID string) *failure {
	var m struct {
		Config    ocispec.Descriptor   `json:"config"`
		Manifests []ocispec.Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return &failure{SignatureValidationFailed, fmt.Sprintf("manifest %s@%s: %v", s.repo, s.desc.Digest, err)}
	}
	if m.Config.Digest.String() == imageID {
		return nil
	}
	for i, child := range m.Manifests {
		if i == maxIndexChildren {
			break
		}
		raw, err := s.src.FetchManifest(ctx, child)
		if err != nil {
			return registryFailure(fmt.Sprintf("fetch manifest %s@%s", s.repo, child.Digest), err)
		}
		var cm struct {
			Config ocispec.Descriptor `json:"config"`
		}
		if json.Unmarshal(raw, &cm) == nil && cm.Config.Digest.String() == imageID {
			return nil
		}
	}
	return &failure{SignatureValidationFailed, fmt.Sprintf(
		"the image on the node (id %s) is not what %s names in the registry (%s): it was loaded or re-tagged on the node, so it cannot be verified; pull it through pullguard (imagePullPolicy: Always)",
		imageID, s.name, s.desc.Digest)}
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
		return &failure{SignatureValidationFailed, "the rule requires signatures but no signers are configured on this node"}
	}
	verify := func(ctx context.Context) (*Facts, error) {
		if err := e.complete(ctx, s); err != nil {
			return nil, err
		}
		f, err := e.opts.Trust.VerifyFrom(ctx, s.src, s.repo, s.desc)
		if err != nil {
			return nil, err
		}
		return &Facts{Trust: f}, nil
	}
	var (
		got *Facts
		err error
	)
	if e.opts.Facts != nil {
		// Signatures live in a repository, so the repository is part of the
		// key along with the content and the trust material.
		key := "trust\x00" + s.repo.String() + "\x00" + s.desc.Digest.String() + "\x00" + e.opts.Trust.TrustMaterialHash()
		got, _, err = e.opts.Facts.Do(ctx, key, verify)
	} else {
		got, err = verify(ctx)
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
		return &failure{SignatureValidationFailed, unmet}
	}
	return nil
}

// failure is why a check did not pass.
type failure struct {
	category Category
	reason   string
}

// registryFailure classifies a registry error: could not ask (fail closed
// with RegistryUnavailable) versus asked and was refused.
func registryFailure(what string, err error) *failure {
	if what == "" {
		what = "registry"
	}
	switch {
	case errors.Is(err, registry.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return &failure{RegistryUnavailable, fmt.Sprintf("%s: %v", what, err)}
	case errors.Is(err, registry.ErrUnauthorized):
		return &failure{SignatureValidationFailed, fmt.Sprintf("%s: the registry refused access (%v); the pod's imagePullSecrets must grant it", what, err)}
	case errors.Is(err, registry.ErrNotFound):
		return &failure{SignatureValidationFailed, fmt.Sprintf("%s: not found in the registry", what)}
	}
	return &failure{SignatureValidationFailed, fmt.Sprintf("%s: %v", what, err)}
}
