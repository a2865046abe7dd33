package registry_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pullguard/pullguard/plugin/registry"
	"github.com/pullguard/pullguard/plugin/registry/registrytest"
)

const sigType = "application/vnd.cncf.notary.signature"

func newClient(t *testing.T, opts registry.Options) *registry.Client {
	t.Helper()
	c, err := registry.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func named(t *testing.T, s string) reference.Named {
	t.Helper()
	n, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestResolveTagAndDigest(t *testing.T) {
	for _, referrers := range []bool{true, false} {
		t.Run(fmt.Sprintf("referrersAPI=%v", referrers), func(t *testing.T) {
			srv := registrytest.Start(t, registrytest.Config{Referrers: referrers})
			img := registrytest.PushImage(t, srv.Repo(t, "app"), "v1")
			c := newClient(t, registry.Options{})
			ctx := context.Background()

			for _, ref := range []string{srv.Host + "/app:v1", srv.Host + "/app@" + img.Digest.String()} {
				got, err := c.Resolve(ctx, named(t, ref), nil)
				if err != nil {
					t.Fatalf("resolve %s: %v", ref, err)
				}
				if got.Digest != img.Digest || got.Size != img.Size || got.MediaType != ocispec.MediaTypeImageManifest {
					t.Fatalf("resolve %s = %+v, want %+v", ref, got, img)
				}
			}
			_, err := c.Resolve(ctx, named(t, srv.Host+"/app:missing"), nil)
			if !errors.Is(err, registry.ErrNotFound) {
				t.Fatalf("missing tag: got %v, want ErrNotFound", err)
			}
		})
	}
}

func TestReferrersBothModes(t *testing.T) {
	for _, referrers := range []bool{true, false} {
		t.Run(fmt.Sprintf("referrersAPI=%v", referrers), func(t *testing.T) {
			var apiCalls, tagCalls atomic.Int32
			srv := registrytest.Start(t, registrytest.Config{Referrers: referrers, Wrap: func(h http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if strings.Contains(r.URL.Path, "/referrers/") {
						apiCalls.Add(1)
					}
					if strings.Contains(r.URL.Path, "/manifests/sha256-") {
						tagCalls.Add(1)
					}
					h.ServeHTTP(w, r)
				})
			}})
			repo := srv.Repo(t, "app")
			img := registrytest.PushImage(t, repo, "v1")
			sig := registrytest.PushArtifact(t, repo, img, sigType, "application/jose+json", []byte(`{}`), nil)
			registrytest.PushArtifact(t, repo, img, "application/sarif+json", "application/sarif+json", []byte(`{}`), nil)
			apiCalls.Store(0)
			tagCalls.Store(0)

			c := newClient(t, registry.Options{})
			got, err := c.Referrers(context.Background(), named(t, srv.Host+"/app"), img, sigType, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0].Digest != sig.Digest {
				t.Fatalf("referrers = %+v, want only %s", got, sig.Digest)
			}
			if referrers && (apiCalls.Load() == 0 || tagCalls.Load() != 0) {
				t.Fatalf("API mode: %d API calls, %d tag schema calls; want API only", apiCalls.Load(), tagCalls.Load())
			}
			if !referrers && tagCalls.Load() == 0 {
				t.Fatalf("tag schema mode: the referrers tag was never read")
			}
			all, err := c.Referrers(context.Background(), named(t, srv.Host+"/app"), img, "", nil)
			if err != nil || len(all) != 2 {
				t.Fatalf("unfiltered referrers = %d, %v; want 2", len(all), err)
			}
		})
	}
}

func TestReferrersBounded(t *testing.T) {
	for _, referrers := range []bool{true, false} {
		t.Run(fmt.Sprintf("referrersAPI=%v", referrers), func(t *testing.T) {
			srv := registrytest.Start(t, registrytest.Config{Referrers: referrers})
			repo := srv.Repo(t, "app")
			img := registrytest.PushImage(t, repo, "v1")
			for i := range 5 {
				registrytest.PushArtifact(t, repo, img, sigType, "application/jose+json", []byte(fmt.Sprintf(`{"n":%d}`, i)), nil)
			}
			c := newClient(t, registry.Options{MaxReferrers: 3})
			got, err := c.Referrers(context.Background(), named(t, srv.Host+"/app"), img, sigType, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 3 {
				t.Fatalf("got %d referrers, want the bound 3", len(got))
			}
		})
	}
}

func TestFetchBoundedAndVerified(t *testing.T) {
	srv := registrytest.Start(t, registrytest.Config{Referrers: true})
	repo := srv.Repo(t, "app")
	big := registrytest.PushImageWithAnnotations(t, repo, "big", map[string]string{"pad": strings.Repeat("x", 4096)})
	small := registrytest.PushImage(t, repo, "small")
	blob := registrytest.PushBlob(t, repo, "application/octet-stream", []byte(strings.Repeat("y", 2048)))
	c := newClient(t, registry.Options{MaxManifestBytes: 2048, MaxBlobBytes: 1024})
	ctx := context.Background()
	name := named(t, srv.Host+"/app")

	tests := []struct {
		name    string
		call    func() error
		wantErr error
	}{
		{"manifest within bound", func() error { _, err := c.FetchManifest(ctx, name, small, nil); return err }, nil},
		{"oversized manifest by descriptor", func() error { _, err := c.FetchManifest(ctx, name, big, nil); return err }, registry.ErrTooLarge},
		{"oversized manifest by tag", func() error { _, err := c.Resolve(ctx, named(t, srv.Host+"/app:big"), nil); return err }, registry.ErrTooLarge},
		{"oversized blob", func() error { _, err := c.FetchBlob(ctx, name, blob, nil); return err }, registry.ErrTooLarge},
		{"lying descriptor size", func() error {
			d := small
			d.Size--
			_, err := c.FetchManifest(ctx, name, d, nil)
			return err
		}, registry.ErrIntegrity},
		{"unknown blob", func() error {
			d := blob
			d.Digest = digest.Digest("sha256:" + strings.Repeat("0", 64))
			d.Size = 10
			_, err := c.FetchBlob(ctx, name, d, nil)
			return err
		}, registry.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// A registry (or mirror) that alters content must be caught by the digest
// check. The tampering proxy is the only fake here: a real registry is
// content-addressed and cannot be made to lie.
func TestFetchDetectsTamperedContent(t *testing.T) {
	srv := registrytest.Start(t, registrytest.Config{Wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
				rec := &flipWriter{ResponseWriter: w}
				h.ServeHTTP(rec, r)
				return
			}
			h.ServeHTTP(w, r)
		})
	}})
	repo := srv.Repo(t, "app")
	blob := registrytest.PushBlob(t, repo, "application/octet-stream", []byte("hello, world"))
	c := newClient(t, registry.Options{})
	_, err := c.FetchBlob(context.Background(), named(t, srv.Host+"/app"), blob, nil)
	if !errors.Is(err, registry.ErrIntegrity) {
		t.Fatalf("got %v, want ErrIntegrity", err)
	}
}

// flipWriter flips the first byte of a response body.
type flipWriter struct {
	http.ResponseWriter
	done bool
}

func (f *flipWriter) Write(b []byte) (int, error) {
	if !f.done && len(b) > 0 {
		f.done = true
		c := append([]byte(nil), b...)
		c[0] ^= 0xff
		return f.ResponseWriter.Write(c)
	}
	return f.ResponseWriter.Write(b)
}

func TestCredentials(t *testing.T) {
	srv := registrytest.Start(t, registrytest.Config{Username: "alice", Password: "s3cret"})
	img := registrytest.PushImage(t, srv.Repo(t, "private"), "v1")
	c := newClient(t, registry.Options{})
	ref := named(t, srv.Host+"/private:v1")
	tests := []struct {
		name    string
		creds   *registry.Credentials
		wantErr error
	}{
		{"correct", &registry.Credentials{Username: "alice", Password: "s3cret"}, nil},
		{"correct via CRI auth field", registry.CredentialsFromCRI(srv.Host, "", "", "YWxpY2U6czNjcmV0", "", "", ""), nil},
		{"wrong password", &registry.Credentials{Username: "alice", Password: "nope"}, registry.ErrUnauthorized},
		{"anonymous", nil, registry.ErrUnauthorized},
		{"server address for another registry", registry.CredentialsFromCRI(srv.Host, "alice", "s3cret", "", "https://other.example", "", ""), registry.ErrUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.Resolve(context.Background(), ref, tt.creds)
			if tt.wantErr == nil {
				if err != nil || got.Digest != img.Digest {
					t.Fatalf("resolve = %v, %v; want %s", got.Digest, err, img.Digest)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
			if tt.creds != nil && strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("error leaks the password: %v", err)
			}
		})
	}
}

func TestUnavailable(t *testing.T) {
	hang := registrytest.Start(t, registrytest.Config{Wrap: func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	}})
	overloaded := registrytest.Start(t, registrytest.Config{Wrap: func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	}})
	limited := registrytest.Start(t, registrytest.Config{Wrap: func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTooManyRequests) })
	}})
	closed := registrytest.Start(t, registrytest.Config{})
	closedHost := closed.Host
	// A port nothing listens on any more: stop that server now.
	closedSrvStop(t, closed)

	c := newClient(t, registry.Options{Timeout: 300 * time.Millisecond})
	for name, host := range map[string]string{"hangs": hang.Host, "503": overloaded.Host, "429": limited.Host, "refused": closedHost} {
		t.Run(name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, err := c.Resolve(context.Background(), named(t, host+"/app:v1"), nil)
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, registry.ErrUnavailable) {
					t.Fatalf("got %v, want ErrUnavailable", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("resolve did not return although the per-call timeout is 300ms")
			}
		})
	}
}

func closedSrvStop(t *testing.T, s *registrytest.Server) {
	t.Helper()
	resp, err := http.Get(s.URL + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	s.Close()
}

func TestMirrorFromHostsDir(t *testing.T) {
	mirror := registrytest.Start(t, registrytest.Config{Referrers: true, Wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// The mirror serves under /mirror/v2 (override_path) and wants
			// to be told the upstream registry.
			if !strings.HasPrefix(r.URL.Path, "/mirror/v2/") || r.URL.Query().Get("ns") != "upstream.invalid:5000" {
				http.NotFound(w, r)
				return
			}
			r.URL.Path = strings.TrimPrefix(r.URL.Path, "/mirror")
			h.ServeHTTP(w, r)
		})
	}})
	root := t.TempDir()
	dir := filepath.Join(root, "upstream.invalid_5000_")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	hosts := fmt.Sprintf("server = \"https://upstream.invalid:5000\"\n\n[host.\"http://%s/mirror/v2\"]\n  capabilities = [\"pull\", \"resolve\", \"referrers\"]\n  override_path = true\n", mirror.Host)
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, registry.Options{HostsDir: root, Timeout: 2 * time.Second})
	eps, err := c.Endpoints("upstream.invalid:5000")
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 2 || eps[0].Host != mirror.Host || eps[0].Path != "/mirror/v2" || eps[1].Host != "upstream.invalid:5000" {
		t.Fatalf("endpoints = %+v", eps)
	}
	img := registrytest.PushImage(t, mirror.Repo(t, "team/app"), "v1")
	got, err := c.Resolve(context.Background(), named(t, "upstream.invalid:5000/team/app:v1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != img.Digest {
		t.Fatalf("resolved %s through the mirror, want %s", got.Digest, img.Digest)
	}
}

func TestCredentialsAskedPerEndpointHost(t *testing.T) {
	srv := registrytest.Start(t, registrytest.Config{Username: "alice", Password: "s3cret"})
	img := registrytest.PushImage(t, srv.Repo(t, "private"), "v1")
	c := newClient(t, registry.Options{})
	ref := named(t, srv.Host+"/private:v1")
	tests := []struct {
		name    string
		forHost string
		wantErr error
	}{
		{"credentials for this host", srv.Host, nil},
		{"credentials only for another host", "other.example", registry.ErrUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var asked []string
			repo, err := c.RepositoryWith(context.Background(), ref, func(host, repository string) *registry.Credentials {
				asked = append(asked, host+" "+repository)
				if host == tt.forHost {
					return &registry.Credentials{Username: "alice", Password: "s3cret"}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			got, err := repo.Resolve(context.Background(), ref)
			if tt.wantErr == nil && (err != nil || got.Digest != img.Digest) || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("resolve = %v, %v; want %v", got.Digest, err, tt.wantErr)
			}
			if len(asked) != 1 || asked[0] != srv.Host+" private" {
				t.Fatalf("credentials asked for %v, want [%s private]", asked, srv.Host)
			}
		})
	}
}

func TestTLSRegistries(t *testing.T) {
	srv := registrytest.Start(t, registrytest.Config{TLS: true})
	img := registrytest.PushImage(t, srv.Repo(t, "app"), "v1")
	caFile := filepath.Join(t.TempDir(), "registry-ca.pem")
	if err := os.WriteFile(caFile, srv.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	// hostsDir writes <root>/<host_port_>/hosts.toml (and the CA beside it).
	hostsDir := func(t *testing.T, body string) string {
		root := t.TempDir()
		h, port, _ := strings.Cut(srv.Host, ":")
		dir := filepath.Join(root, h+"_"+port+"_")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "ca.pem"), srv.CertPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return root
	}
	server := fmt.Sprintf("server = %q\n", "https://"+srv.Host)
	tests := []struct {
		name    string
		opts    func(t *testing.T) registry.Options
		wantErr error
	}{
		{"https server, CA not trusted", func(t *testing.T) registry.Options {
			return registry.Options{HostsDir: hostsDir(t, server)}
		}, registry.ErrUnavailable},
		{"https server, CA from options", func(t *testing.T) registry.Options {
			return registry.Options{HostsDir: hostsDir(t, server), CAFiles: []string{caFile}}
		}, nil},
		{"hosts.toml ca (relative path)", func(t *testing.T) registry.Options {
			return registry.Options{HostsDir: hostsDir(t, server+"ca = \"ca.pem\"\n")}
		}, nil},
		{"hosts.toml skip_verify", func(t *testing.T) registry.Options {
			return registry.Options{HostsDir: hostsDir(t, server+"skip_verify = true\n")}
		}, nil},
		{"insecure_skip_verify option", func(t *testing.T) registry.Options {
			return registry.Options{InsecureSkipVerify: []string{srv.Host}}
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClient(t, tt.opts(t))
			got, err := c.Resolve(context.Background(), named(t, srv.Host+"/app:v1"), nil)
			if tt.wantErr == nil && (err != nil || got.Digest != img.Digest) || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("resolve = %v, %v; want %v", got.Digest, err, tt.wantErr)
			}
		})
	}
	if _, err := registry.New(registry.Options{CAFiles: []string{"/nonexistent/ca.pem"}}); err == nil || !strings.Contains(err.Error(), "/nonexistent/ca.pem") {
		t.Fatalf("missing CA file: err = %v", err)
	}
}

// A registry that answers the referrers API with 400 (as some do instead of
// 404) still has its tag schema referrers found.
func TestReferrersAPIBadRequestFallsBackToTagSchema(t *testing.T) {
	srv := registrytest.Start(t, registrytest.Config{Wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/referrers/") {
				http.Error(w, `{"errors":[{"code":"UNSUPPORTED","message":"no"}]}`, http.StatusBadRequest)
				return
			}
			h.ServeHTTP(w, r)
		})
	}})
	repo := srv.Repo(t, "app")
	img := registrytest.PushImage(t, repo, "v1")
	sig := registrytest.PushArtifact(t, repo, img, sigType, "application/jose+json", []byte(`{}`), nil)
	got, err := newClient(t, registry.Options{}).Referrers(context.Background(), named(t, srv.Host+"/app"), img, sigType, nil)
	if err != nil || len(got) != 1 || got[0].Digest != sig.Digest {
		t.Fatalf("referrers = %v, %v; want [%s]", got, err, sig.Digest)
	}
}
