package testbed

import (
	"fmt"
	"os"
	"path/filepath"

	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
)

// AllowPlainHTTP lets the bed's containerd pull from another loopback registry (a second
// registry with auth, an in-process one, a proxy) over plain HTTP by adding a hosts.toml for
// host to its certs.d. containerd reads certs.d on every pull, so no restart is needed.
// pullguard itself reaches loopback registries with a port over plain HTTP on its own.
func (b *Bed) AllowPlainHTTP(host string) error {
	dir := filepath.Join(b.Containerd.Dir, "certs.d", host)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("allow plain http for %s: %w", host, err)
	}
	hosts := fmt.Sprintf("server = \"http://%[1]s\"\n\n[host.\"http://%[1]s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", host)
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		return fmt.Errorf("allow plain http for %s: %w", host, err)
	}
	return nil
}

// RepoClient is an oras-go client for host/repo over plain HTTP, with user's credentials when
// user is not nil: what tests use to sign images and attach scan reports, as a CI pipeline
// would. On the distribution registry (no referrers API) oras-go falls back to the referrers
// tag schema by itself.
func RepoClient(host, repo string, user *BasicAuth) (*remote.Repository, error) {
	r, err := remote.NewRepository(host + "/" + repo)
	if err != nil {
		return nil, fmt.Errorf("repository client for %s/%s: %w", host, repo, err)
	}
	r.PlainHTTP = true
	if user != nil {
		r.Client = &auth.Client{
			Cache:      auth.NewCache(),
			Credential: auth.StaticCredential(host, auth.Credential{Username: user.Username, Password: user.Password}),
		}
	}
	return r, nil
}

// RegistryAt is a push-only handle on any loopback registry (e.g. an in-process one), so
// Registry.Push works against it too.
func RegistryAt(host string, user *BasicAuth) *Registry { return &Registry{Host: host, Auth: user} }
