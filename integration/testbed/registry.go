package testbed

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// BasicAuth is a registry user for htpasswd authentication.
type BasicAuth struct {
	Username string
	Password string
}

// Registry is a running distribution registry on 127.0.0.1 (plain HTTP).
type Registry struct {
	Host string     // "127.0.0.1:PORT", the name prefix of pushed images
	Auth *BasicAuth // nil when the registry is open
	Dir  string
	proc *Process
}

// StartRegistry starts a distribution v3 registry with storage under dir. With auth, every
// request needs that user (htpasswd, bcrypt).
func StartRegistry(ctx context.Context, tools Tools, dir string, auth *BasicAuth) (*Registry, error) {
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return nil, fmt.Errorf("start registry: %w", err)
	}
	authYAML := ""
	if auth != nil {
		hash, err := bcrypt.GenerateFromPassword([]byte(auth.Password), bcrypt.MinCost)
		if err != nil {
			return nil, fmt.Errorf("start registry: hash password: %w", err)
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(auth.Username+":"+string(hash)+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("start registry: %w", err)
		}
		authYAML = fmt.Sprintf("auth:\n  htpasswd:\n    realm: pullguard-testbed\n    path: %s\n", htpasswd)
	}
	// A port picked by the kernel can be taken between close and the registry's bind: retry.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("start registry: %w", err)
		}
		host := "127.0.0.1:" + strconv.Itoa(port)
		cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
%s`, filepath.Join(dir, "data"), host, authYAML)
		cfgPath := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
			return nil, fmt.Errorf("start registry: %w", err)
		}
		p, err := startProcess("registry", filepath.Join(dir, "registry.log"), childEnv(tools, "OTEL_TRACES_EXPORTER=none"), tools.Registry, "serve", cfgPath)
		if err != nil {
			return nil, err
		}
		r := &Registry{Host: host, Auth: auth, Dir: dir, proc: p}
		lastErr = waitFor(ctx, 15*time.Second, p, "registry "+host, r.ping)
		if lastErr == nil {
			return r, nil
		}
		_ = p.Stop(2 * time.Second)
	}
	return nil, fmt.Errorf("start registry: %w", lastErr)
}

// ping succeeds once /v2/ answers (401 counts: the registry is up and asks for credentials).
func (r *Registry) ping(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.Host+"/v2/", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("GET /v2/: %s", resp.Status)
	}
	return nil
}

// Process is the registry's process (logs, pid).
func (r *Registry) Process() *Process { return r.proc }

// Stop stops the registry.
func (r *Registry) Stop() error { return r.proc.Stop(5 * time.Second) }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
