// Package registrytest runs real OCI registries in-process for tests
// (go-containerregistry's registry on loopback, with or without the OCI
// referrers API) and pushes small images and artifacts to them.
package registrytest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
)

// Config selects the registry's behaviour.
type Config struct {
	// Referrers serves the OCI referrers API. Without it clients must use
	// the referrers tag schema (like the distribution registry).
	Referrers bool
	// Username and Password, when set, require HTTP basic auth on every
	// request (a private registry).
	Username, Password string
	// Wrap, when set, wraps the registry handler (to inject faults).
	Wrap func(http.Handler) http.Handler
	// TLS serves https with httptest's self-signed certificate (for
	// 127.0.0.1); Server.CertPEM is the certificate to trust.
	TLS bool
}

// Server is a running registry on 127.0.0.1.
type Server struct {
	Host string // host:port, for image references
	URL  string
	cfg  Config
	srv  *httptest.Server
	// rawHost serves the same storage without Config.Wrap, so tests push
	// content undisturbed by the faults they inject.
	rawHost   string
	rawClient *http.Client
	// CertPEM is the server certificate when Config.TLS is set.
	CertPEM []byte
}

// Close stops the registry (before the test ends, e.g. to make it unreachable).
func (s *Server) Close() { s.srv.Close() }

// Start runs a registry until the test ends.
func Start(t testing.TB, cfg Config) *Server {
	t.Helper()
	var h http.Handler = ggcrregistry.New(ggcrregistry.WithReferrersSupport(cfg.Referrers), ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	if cfg.Username != "" {
		h = basicAuth(h, cfg.Username, cfg.Password)
	}
	start := func(h http.Handler) *httptest.Server {
		s := httptest.NewUnstartedServer(h)
		if cfg.TLS {
			s.StartTLS()
		} else {
			s.Start()
		}
		t.Cleanup(s.Close)
		return s
	}
	raw := start(h)
	srv := raw
	if cfg.Wrap != nil {
		srv = start(cfg.Wrap(h))
	}
	host := func(u string) string { return strings.TrimPrefix(strings.TrimPrefix(u, "http://"), "https://") }
	out := &Server{Host: host(srv.URL), URL: srv.URL, cfg: cfg, srv: srv, rawHost: host(raw.URL), rawClient: raw.Client()}
	if cfg.TLS {
		out.CertPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	}
	return out
}

func basicAuth(next http.Handler, user, pass string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="registrytest"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Repo returns a client for repository name with the registry's own
// credentials, for pushing test content. On a registry with the referrers
// API it pushes referrers through the API only (no tag schema index), so
// tests of either mode really exercise that mode.
func (s *Server) Repo(t testing.TB, name string) *remote.Repository {
	t.Helper()
	repo, err := remote.NewRepository(s.rawHost + "/" + name)
	if err != nil {
		t.Fatal(err)
	}
	repo.PlainHTTP = !s.cfg.TLS
	cred := auth.Credential{Username: s.cfg.Username, Password: s.cfg.Password}
	repo.Client = &auth.Client{Client: s.rawClient, Cache: auth.NewCache(), Credential: auth.StaticCredential(s.rawHost, cred)}
	if s.cfg.Referrers {
		if err := repo.SetReferrersCapability(true); err != nil {
			t.Fatal(err)
		}
	}
	return repo
}

// PushImage pushes a small random single-layer OCI image and tags it.
func PushImage(t testing.TB, repo *remote.Repository, tag string) ocispec.Descriptor {
	t.Helper()
	return PushImageWithAnnotations(t, repo, tag, nil)
}

// PushImageWithAnnotations is PushImage with manifest annotations (which
// also make a manifest as large as a test needs).
func PushImageWithAnnotations(t testing.TB, repo *remote.Repository, tag string, annotations map[string]string) ocispec.Descriptor {
	t.Helper()
	ctx := context.Background()
	layerData := make([]byte, 64)
	if _, err := rand.Read(layerData); err != nil {
		t.Fatal(err)
	}
	layer := PushBlob(t, repo, ocispec.MediaTypeImageLayer, layerData)
	cfgData, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{digest.FromBytes(layerData).String()}},
	})
	cfg := PushBlob(t, repo, ocispec.MediaTypeImageConfig, cfgData)
	desc, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, "", oras.PackManifestOptions{
		Layers: []ocispec.Descriptor{layer}, ConfigDescriptor: &cfg, ManifestAnnotations: annotations,
	})
	if err != nil {
		t.Fatalf("push image manifest: %v", err)
	}
	if tag != "" {
		if err := repo.Tag(ctx, desc, tag); err != nil {
			t.Fatalf("tag %s: %v", tag, err)
		}
	}
	return desc
}

// PushBlob pushes data as a blob.
func PushBlob(t testing.TB, repo *remote.Repository, mediaType string, data []byte) ocispec.Descriptor {
	t.Helper()
	desc := content.NewDescriptorFromBytes(mediaType, data)
	if err := repo.Blobs().Push(context.Background(), desc, bytes.NewReader(data)); err != nil {
		t.Fatalf("push blob: %v", err)
	}
	return desc
}

// PushArtifact pushes an artifact manifest referring to subject, with one
// layer holding data (as notation does with signature envelopes). The
// config is the empty descriptor with configMediaType, so registries that
// report the config media type as artifactType agree with artifactType.
func PushArtifact(t testing.TB, repo *remote.Repository, subject ocispec.Descriptor, artifactType, layerMediaType string, data []byte, annotations map[string]string) ocispec.Descriptor {
	t.Helper()
	ctx := context.Background()
	layer := PushBlob(t, repo, layerMediaType, data)
	cfg := ocispec.DescriptorEmptyJSON
	cfg.MediaType = artifactType
	if err := repo.Blobs().Push(ctx, cfg, bytes.NewReader(cfg.Data)); err != nil && !strings.Contains(err.Error(), "exist") {
		t.Fatalf("push config: %v", err)
	}
	cfg.Data = nil
	desc, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, artifactType, oras.PackManifestOptions{
		Subject: &subject, Layers: []ocispec.Descriptor{layer}, ConfigDescriptor: &cfg, ManifestAnnotations: annotations,
	})
	if err != nil {
		t.Fatalf("push artifact: %v", err)
	}
	return desc
}
