package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
)

// Repository is one image repository reached with one set of credentials,
// for the duration of one decision: endpoints, token cache and the
// referrers-API capability are shared by its calls and then dropped.
type Repository struct {
	c         *Client
	name      reference.Named
	endpoints []repoEndpoint
}

type repoEndpoint struct {
	ep   Endpoint
	repo *remote.Repository
}

// CredentialFunc returns the credentials to present to one registry host
// for one repository on it (nil: anonymous). Like containerd, a Repository
// asks once per endpoint it may contact, with the endpoint's host (a
// mirror's host, or "registry-1.docker.io" for docker.io) and the
// repository's path ("library/nginx"): a docker config.json may hold
// different credentials for two repositories of one host, while a CRI
// AuthConfig is for the whole host.
type CredentialFunc func(host, repository string) *Credentials

// Repository prepares access to the repository of ref (its tag or digest is
// ignored). creds may be nil (anonymous); they are sent to every endpoint of
// the repository, as containerd does for credentials without a server address.
func (c *Client) Repository(ctx context.Context, ref reference.Named, creds *Credentials) (*Repository, error) {
	return c.RepositoryWith(ctx, ref, func(string, string) *Credentials { return creds })
}

// RepositoryWith is Repository asking creds (which may be nil) for each
// endpoint's credentials.
func (c *Client) RepositoryWith(ctx context.Context, ref reference.Named, creds CredentialFunc) (*Repository, error) {
	domain := reference.Domain(ref)
	eps, err := c.Endpoints(domain)
	if err != nil {
		return nil, err
	}
	r := &Repository{c: c, name: reference.TrimNamed(ref)}
	cache := auth.NewCache()
	for _, ep := range eps {
		base, err := c.transportFor(ep)
		if err != nil {
			return nil, err
		}
		upstream := ""
		if ep.Host != eps[len(eps)-1].Host {
			upstream = domain
		}
		httpClient := &http.Client{Transport: &endpointTransport{base: base, ep: ep, upstream: upstream}}
		var cred auth.Credential
		var epCreds *Credentials
		if creds != nil {
			epCreds = creds(ep.Host, reference.Path(ref))
		}
		if !epCreds.empty() {
			cred = auth.Credential{Username: epCreds.Username, Password: epCreds.Password, RefreshToken: epCreds.IdentityToken, AccessToken: epCreds.RegistryToken}
		}
		client := &auth.Client{
			Client:     httpClient,
			Cache:      cache,
			Header:     http.Header{"User-Agent": {"pullguard"}},
			Credential: func(context.Context, string) (auth.Credential, error) { return cred, nil },
		}
		rr := &remote.Repository{
			Client:           client,
			PlainHTTP:        ep.Scheme == "http",
			MaxMetadataBytes: c.opts.MaxManifestBytes,
			// One page per 64 referrers is far more than any registry
			// returns per page; it only stops a server paging forever.
			ReferrerListMaxPages: c.opts.MaxReferrers/64 + 2,
		}
		rr.Reference.Registry = ep.Host
		rr.Reference.Repository = reference.Path(ref)
		r.endpoints = append(r.endpoints, repoEndpoint{ep: ep, repo: rr})
	}
	return r, nil
}

// Name is the repository (no tag or digest).
func (r *Repository) Name() reference.Named { return r.name }

// try runs op against each endpoint having capability need, in order, each
// attempt bounded by the client's timeout, until one succeeds. The last
// error is returned, classified.
func (r *Repository) try(ctx context.Context, need Capability, what string, op func(ctx context.Context, rr *remote.Repository) error) error {
	var lastErr error
	for _, e := range r.endpoints {
		if e.ep.Capabilities&need == 0 {
			continue
		}
		callCtx, cancel := context.WithTimeout(ctx, r.c.opts.Timeout)
		err := op(callCtx, e.repo)
		cancel()
		if err == nil {
			return nil
		}
		lastErr = fmt.Errorf("%s from %s://%s: %w", what, e.ep.Scheme, e.ep.Host, classify(err))
		if ctx.Err() != nil {
			break
		}
		r.c.log.DebugContext(ctx, "registry endpoint failed", "repository", r.name.Name(), "endpoint", e.ep.Host, "op", what, "error", lastErr)
	}
	if lastErr == nil {
		return fmt.Errorf("%s: no endpoint of %s may be used for it (hosts.toml capabilities): %w", what, reference.Domain(r.name), ErrNotFound)
	}
	return lastErr
}

// Resolve returns the descriptor of ref's manifest or index: by digest if
// ref has one, else by tag ("latest" if none). The manifest is fetched and
// hashed, so the digest, size and media type are what the bytes say, not
// what a header claims.
func (r *Repository) Resolve(ctx context.Context, ref reference.Named) (ocispec.Descriptor, error) {
	desc, _, err := r.ResolveManifest(ctx, ref)
	return desc, err
}

// ResolveManifest is Resolve that also returns the manifest bytes.
func (r *Repository) ResolveManifest(ctx context.Context, ref reference.Named) (ocispec.Descriptor, []byte, error) {
	if ref.Name() != r.name.Name() {
		return ocispec.Descriptor{}, nil, fmt.Errorf("resolve %s: not in repository %s", ref, r.name)
	}
	var want digest.Digest
	target := "latest"
	if d, ok := ref.(reference.Digested); ok {
		want = d.Digest()
		if err := want.Validate(); err != nil {
			return ocispec.Descriptor{}, nil, fmt.Errorf("resolve %s: %w", ref, err)
		}
		target = want.String()
	} else if t, ok := ref.(reference.Tagged); ok {
		target = t.Tag()
	}
	var desc ocispec.Descriptor
	var body []byte
	err := r.try(ctx, CapResolve, "resolve "+target, func(ctx context.Context, rr *remote.Repository) error {
		d, rc, err := rr.FetchReference(ctx, target)
		if err != nil {
			return err
		}
		defer rc.Close()
		b, err := readBounded(rc, r.c.opts.MaxManifestBytes)
		if err != nil {
			return err
		}
		desc, body = d, b
		return nil
	})
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("resolve %s: %w", ref, err)
	}
	alg := digest.Canonical
	if want != "" {
		alg = want.Algorithm()
	} else if desc.Digest.Validate() == nil && desc.Digest.Algorithm().Available() {
		alg = desc.Digest.Algorithm()
	}
	if !alg.Available() {
		return ocispec.Descriptor{}, nil, fmt.Errorf("resolve %s: unsupported digest algorithm %s", ref, alg)
	}
	got := alg.FromBytes(body)
	if want != "" && got != want {
		return ocispec.Descriptor{}, nil, fmt.Errorf("resolve %s: manifest hashes to %s: %w", ref, got, ErrIntegrity)
	}
	if desc.Digest != "" && desc.Digest != got {
		return ocispec.Descriptor{}, nil, fmt.Errorf("resolve %s: registry says %s, manifest hashes to %s: %w", ref, desc.Digest, got, ErrIntegrity)
	}
	mediaType := desc.MediaType
	if mediaType == "" {
		mediaType = sniffMediaType(body)
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: got, Size: int64(len(body))}, body, nil
}

// sniffMediaType reads the mediaType field of a manifest, for registries
// that send no Content-Type.
func sniffMediaType(b []byte) string {
	var m struct {
		MediaType string `json:"mediaType"`
	}
	_ = json.Unmarshal(b, &m)
	return m.MediaType
}

// FetchManifest fetches the manifest desc describes, refusing anything
// larger than MaxManifestBytes and verifying size and digest.
func (r *Repository) FetchManifest(ctx context.Context, desc ocispec.Descriptor) ([]byte, error) {
	return r.fetch(ctx, desc, r.c.opts.MaxManifestBytes, true)
}

// FetchBlob fetches the blob desc describes, refusing anything larger than
// MaxBlobBytes and verifying size and digest.
func (r *Repository) FetchBlob(ctx context.Context, desc ocispec.Descriptor) ([]byte, error) {
	return r.fetch(ctx, desc, r.c.opts.MaxBlobBytes, false)
}

func (r *Repository) fetch(ctx context.Context, desc ocispec.Descriptor, limit int64, manifest bool) ([]byte, error) {
	kind := "blob"
	if manifest {
		kind = "manifest"
	}
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("fetch %s %s: %w", kind, desc.Digest, err)
	}
	if desc.Size < 0 || desc.Size > limit {
		return nil, fmt.Errorf("fetch %s %s: size %d exceeds limit %d: %w", kind, desc.Digest, desc.Size, limit, ErrTooLarge)
	}
	var body []byte
	err := r.try(ctx, CapPull, "fetch "+kind+" "+desc.Digest.String(), func(ctx context.Context, rr *remote.Repository) error {
		var rc io.ReadCloser
		var err error
		if manifest {
			rc, err = rr.Manifests().Fetch(ctx, desc)
		} else {
			rc, err = rr.Blobs().Fetch(ctx, desc)
		}
		if err != nil {
			return err
		}
		defer rc.Close()
		b, err := readBounded(rc, desc.Size)
		if err != nil {
			return err
		}
		if int64(len(b)) != desc.Size {
			return fmt.Errorf("got %d bytes, descriptor says %d: %w", len(b), desc.Size, ErrIntegrity)
		}
		if got := desc.Digest.Algorithm().FromBytes(b); got != desc.Digest {
			return fmt.Errorf("content hashes to %s: %w", got, ErrIntegrity)
		}
		body = b
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("fetch %s %s: %w", kind, desc.Digest, err)
	}
	return body, nil
}

// readBounded reads all of rc, failing with ErrTooLarge past limit bytes.
func readBounded(rc io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("more than %d bytes: %w", limit, ErrTooLarge)
	}
	return b, nil
}

// errEnoughReferrers stops a referrers listing once the bound is reached.
var errEnoughReferrers = errors.New("referrers bound reached")

// Referrers lists the manifests whose subject is subject, filtered by
// artifactType ("" for all), at most MaxReferrers of them (the rest are
// dropped and logged). It asks the OCI referrers API and, where that is not
// offered or lists nothing, the referrers tag schema ("sha256-<hex>" index).
func (r *Repository) Referrers(ctx context.Context, subject ocispec.Descriptor, artifactType string) ([]ocispec.Descriptor, error) {
	limit := r.c.opts.MaxReferrers
	var out []ocispec.Descriptor
	seen := map[digest.Digest]bool{}
	truncated := false
	add := func(ds []ocispec.Descriptor) error {
		for _, d := range ds {
			if seen[d.Digest] || (artifactType != "" && d.ArtifactType != artifactType) {
				continue
			}
			if len(out) >= limit {
				truncated = true
				return errEnoughReferrers
			}
			seen[d.Digest] = true
			out = append(out, d)
		}
		return nil
	}
	err := r.try(ctx, CapReferrers, "list referrers of "+subject.Digest.String(), func(ctx context.Context, rr *remote.Repository) error {
		out, truncated = out[:0], false
		clear(seen)
		err := rr.Referrers(ctx, subject, artifactType, add)
		if err != nil && !errors.Is(err, errEnoughReferrers) {
			c := classify(err)
			if errors.Is(c, ErrUnavailable) || errors.Is(c, ErrUnauthorized) {
				return err
			}
			// Some registries answer the referrers API with 400/405 instead
			// of 404; the tag schema may still hold the referrers.
			r.c.log.DebugContext(ctx, "referrers API failed, trying the tag schema", "repository", r.name.Name(), "error", err)
			out, truncated = out[:0], false
			clear(seen)
			if tagErr := referrersByTag(ctx, rr, subject, r.c.opts.MaxManifestBytes, add); tagErr != nil {
				return err
			}
			return nil
		}
		if len(out) > 0 {
			return nil
		}
		// A registry with the referrers API may still hold referrers pushed
		// by older tools only under the tag schema.
		return referrersByTag(ctx, rr, subject, r.c.opts.MaxManifestBytes, add)
	})
	if err != nil {
		return nil, fmt.Errorf("referrers of %s@%s: %w", r.name.Name(), subject.Digest, err)
	}
	if truncated {
		r.c.log.WarnContext(ctx, "referrers list truncated", "repository", r.name.Name(), "subject", subject.Digest.String(), "max_referrers", limit)
	}
	return out, nil
}

// referrersByTag reads the referrers tag schema index of subject.
func referrersByTag(ctx context.Context, rr *remote.Repository, subject ocispec.Descriptor, limit int64, add func([]ocispec.Descriptor) error) error {
	tag := strings.Replace(subject.Digest.String(), ":", "-", 1)
	desc, rc, err := rr.FetchReference(ctx, tag)
	if err != nil {
		if errors.Is(classify(err), ErrNotFound) {
			return nil
		}
		return err
	}
	defer rc.Close()
	if desc.MediaType != ocispec.MediaTypeImageIndex || desc.Digest == subject.Digest {
		return nil // not a referrers index
	}
	b, err := readBounded(rc, limit)
	if err != nil {
		return err
	}
	var index ocispec.Index
	if err := json.Unmarshal(b, &index); err != nil {
		return fmt.Errorf("decode referrers index %s: %w", tag, err)
	}
	if err := add(index.Manifests); err != nil && !errors.Is(err, errEnoughReferrers) {
		return err
	}
	return nil
}
