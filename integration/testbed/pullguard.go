package testbed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// PullguardOptions configures one pullguard in front of the bed's containerd.
type PullguardOptions struct {
	// Config is TOML appended to the generated [server], [log], [registry] and [policy] tables:
	// [[policies]], [[signers]], [va], [cache], ... (see notes/CONFIG_SCHEMA.md).
	Config string
	// PolicyFiles are written into the policy directory ([policy].dir): name -> content, e.g.
	// seed-format YAML documents.
	PolicyFiles map[string]string
	// Env is added to pullguard's environment.
	Env []string
}

// Pullguard is a running `pullguard serve` whose upstream is the bed's containerd.
type Pullguard struct {
	Socket     string
	Dir        string
	ConfigPath string
	PolicyDir  string
	Crictl     *Crictl // through this pullguard
	proc       *Process
}

// PullguardBinary returns the pullguard binary: env PULLGUARD_BIN, else ./cmd/pullguard built
// once per bed into its directory.
func (b *Bed) PullguardBinary(ctx context.Context) (string, error) {
	if p := os.Getenv("PULLGUARD_BIN"); p != "" {
		return p, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pgBin != "" {
		return b.pgBin, nil
	}
	out := filepath.Join(b.Dir, "bin", "pullguard")
	var flags []string
	if raceEnabled {
		flags = append(flags, "-race")
	}
	if err := b.goBuild(ctx, out, "./cmd/pullguard", flags...); err != nil {
		return "", err
	}
	b.pgBin = out
	return out, nil
}

// PullguardConfig renders the config StartPullguard writes for a pullguard in dir.
func (b *Bed) PullguardConfig(dir string, opts PullguardOptions) string {
	return fmt.Sprintf(`[server]
socket = %q
upstream = %q
state_dir = %q
shutdown_timeout = "5s"

[log]
level = "debug"
format = "json"

[registry]
plain_http = [%q]

[policy]
dir = %q

`, filepath.Join(dir, "pg.sock"), "unix://"+b.Containerd.Socket, filepath.Join(dir, "state"), b.Registry.Host, filepath.Join(dir, "policies")) + opts.Config
}

// StartPullguard writes a config and policy files, starts `pullguard serve` and waits until a
// CRI Version and Status pass through it. Bed.Close stops it if the caller has not.
func (b *Bed) StartPullguard(ctx context.Context, opts PullguardOptions) (*Pullguard, error) {
	bin, err := b.PullguardBinary(ctx)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(b.Dir, "pg"+strconv.Itoa(b.nextSeq()))
	p := &Pullguard{Socket: filepath.Join(dir, "pg.sock"), Dir: dir, ConfigPath: filepath.Join(dir, "config.toml"), PolicyDir: filepath.Join(dir, "policies")}
	for _, d := range []string{p.PolicyDir, filepath.Join(dir, "state")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("start pullguard: %w", err)
		}
	}
	for name, content := range opts.PolicyFiles {
		if err := os.WriteFile(filepath.Join(p.PolicyDir, name), []byte(content), 0o644); err != nil {
			return nil, fmt.Errorf("start pullguard: write policy %s: %w", name, err)
		}
	}
	if err := os.WriteFile(p.ConfigPath, []byte(b.PullguardConfig(dir, opts)), 0o644); err != nil {
		return nil, fmt.Errorf("start pullguard: %w", err)
	}
	if p.Crictl, err = NewCrictl(b.Tools, dir, p.Socket); err != nil {
		return nil, err
	}
	proc, err := startProcess("pullguard", filepath.Join(dir, "pullguard.log"), childEnv(b.Tools, opts.Env...), bin, "serve", "--config", p.ConfigPath)
	if err != nil {
		return nil, err
	}
	p.proc = proc
	b.mu.Lock()
	b.pullguards = append(b.pullguards, p)
	b.mu.Unlock()
	if err := waitFor(ctx, 30*time.Second, proc, "pullguard on "+p.Socket, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return criReady(ctx, p.Socket)
	}); err != nil {
		_ = p.Stop()
		return nil, fmt.Errorf("start pullguard: %w", err)
	}
	return p, nil
}

// Stop sends SIGTERM (pullguard drains and removes its socket) and waits. A data race the
// race detector reported in a -race build is an error.
func (p *Pullguard) Stop() error {
	if p.proc == nil {
		return nil
	}
	if err := p.proc.Stop(10 * time.Second); err != nil {
		return err
	}
	if logs := p.Logs(); strings.Contains(logs, "WARNING: DATA RACE") {
		i := strings.Index(logs, "WARNING: DATA RACE")
		return fmt.Errorf("pullguard (%s) reported a data race:\n%s", p.ConfigPath, logs[i:min(len(logs), i+6000)])
	}
	return nil
}

// Process is pullguard's process (logs, pid, Exited).
func (p *Pullguard) Process() *Process { return p.proc }

// Logs returns pullguard's log so far.
func (p *Pullguard) Logs() string { return tailFile(p.proc.LogPath, 1<<20) }

// LogLines returns the log lines containing every one of subs.
func (p *Pullguard) LogLines(subs ...string) []string {
	var out []string
	for _, l := range strings.Split(p.Logs(), "\n") {
		ok := l != ""
		for _, s := range subs {
			ok = ok && strings.Contains(l, s)
		}
		if ok {
			out = append(out, l)
		}
	}
	return out
}
