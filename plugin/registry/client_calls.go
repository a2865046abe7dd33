package registry

import (
	"context"

	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Resolve is a one-call Repository(ref).Resolve. Prefer a Repository for
// several calls in one decision: it reuses the registry token.
func (c *Client) Resolve(ctx context.Context, ref reference.Named, creds *Credentials) (ocispec.Descriptor, error) {
	r, err := c.Repository(ctx, ref, creds)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return r.Resolve(ctx, ref)
}

// Referrers is a one-call Repository(repo).Referrers.
func (c *Client) Referrers(ctx context.Context, repo reference.Named, subject ocispec.Descriptor, artifactType string, creds *Credentials) ([]ocispec.Descriptor, error) {
	r, err := c.Repository(ctx, repo, creds)
	if err != nil {
		return nil, err
	}
	return r.Referrers(ctx, subject, artifactType)
}

// FetchManifest is a one-call Repository(repo).FetchManifest.
func (c *Client) FetchManifest(ctx context.Context, repo reference.Named, desc ocispec.Descriptor, creds *Credentials) ([]byte, error) {
	r, err := c.Repository(ctx, repo, creds)
	if err != nil {
		return nil, err
	}
	return r.FetchManifest(ctx, desc)
}

// FetchBlob is a one-call Repository(repo).FetchBlob.
func (c *Client) FetchBlob(ctx context.Context, repo reference.Named, desc ocispec.Descriptor, creds *Credentials) ([]byte, error) {
	r, err := c.Repository(ctx, repo, creds)
	if err != nil {
		return nil, err
	}
	return r.FetchBlob(ctx, desc)
}
