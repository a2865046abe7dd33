package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
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
	// NRI is TOML added inside the generated [nri] table (e.g. `timeout = "50ms"`).
	NRI string
	// Containerd is the containerd this pullguard guards; nil = the bed's.
	Containerd *Containerd
	// NoSandboxPolicy leaves out the cluster policy that admits the bed's pause image.
	NoSandboxPolicy bool
}

// Pullguard is a running `pullguard serve` in front of a containerd: its image service on
// Socket, its NRI plugin registered with containerd (unless containerd runs without NRI).
type Pullguard struct {
	Socket      string
	AdminSocket string // /readyz, /metrics, /v1/status
	Dir         string
	ConfigPath  string
	PolicyDir   string
	// Crictl is wired as kubelet is: image calls through pullguard, runtime calls straight to
	// containerd.
	Crictl     *Crictl
	Containerd *Containerd
	proc       *Process
	bin        string
	env        []string
	starts     int
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
	ctd := opts.Containerd
	if ctd == nil {
		ctd = b.Containerd
	}
	// The generated [nri] keys, unless opts.NRI sets them itself.
	keys := [][2]string{{"mode", `"pull-only"`}}
	if ctd.NRISocket != "" {
		keys = [][2]string{{"socket", fmt.Sprintf("%q", ctd.NRISocket)}, {"containerd_config", fmt.Sprintf("%q", ctd.Config)}, {"sandbox_image", fmt.Sprintf("%q", b.Pause.Ref)}}
	}
	nri := "[nri]\n"
	for _, kv := range keys {
		if !setsKey(opts.NRI, kv[0]) {
			nri += kv[0] + " = " + kv[1] + "\n"
		}
	}
	nri += opts.NRI + "\n"
	if ctd.NRISocket != "" && !opts.NoSandboxPolicy {
		// containerd runs the sandbox image for every pod, decided by the cluster policy.
		nri += sandboxPolicy(b.Pause.Ref)
	}
	return fmt.Sprintf(`[server]
socket = %q
admin_socket = %q
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

%s
`, filepath.Join(dir, "pg.sock"), filepath.Join(dir, "admin.sock"), "unix://"+ctd.Socket, filepath.Join(dir, "state"), b.Registry.Host, filepath.Join(dir, "policies"), nri) + opts.Config
}

// StartPullguard writes a config and policy files, starts `pullguard serve` and waits until a
// CRI Version and Status pass through it. Bed.Close stops it if the caller has not.
func (b *Bed) StartPullguard(ctx context.Context, opts PullguardOptions) (*Pullguard, error) {
	bin, err := b.PullguardBinary(ctx)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(b.Dir, "pg"+strconv.Itoa(b.nextSeq()))
	ctd := opts.Containerd
	if ctd == nil {
		ctd = b.Containerd
	}
	p := &Pullguard{Socket: filepath.Join(dir, "pg.sock"), AdminSocket: filepath.Join(dir, "admin.sock"), Dir: dir, ConfigPath: filepath.Join(dir, "config.toml"), PolicyDir: filepath.Join(dir, "policies"),
		Containerd: ctd, bin: bin, env: childEnv(b.Tools, opts.Env...)}
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
	if p.Crictl, err = NewSplitCrictl(b.Tools, dir, ctd.Socket, p.Socket); err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.pullguards = append(b.pullguards, p)
	b.mu.Unlock()
	if err := p.Start(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// registeredLine is what pullguard logs once containerd's NRI has it registered.
const registeredLine = "registered with containerd's NRI"

// Start (re)starts the pullguard process with its config and waits until its image service
// answers through it and, with NRI, until containerd has its plugin registered.
func (p *Pullguard) Start(ctx context.Context) error {
	if p.proc != nil {
		if exited, _ := p.proc.Exited(); !exited {
			return fmt.Errorf("start pullguard: already running (pid %d)", p.proc.Pid())
		}
	}
	// Each start logs to a file of its own, so "registered" is this start's.
	p.starts++
	logPath := filepath.Join(p.Dir, fmt.Sprintf("pullguard-%d.log", p.starts))
	proc, err := startProcess("pullguard", logPath, p.env, p.bin, "serve", "--config", p.ConfigPath)
	if err != nil {
		return err
	}
	p.proc = proc
	if err := waitFor(ctx, 30*time.Second, proc, "pullguard on "+p.Socket, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if err := imageServiceReady(ctx, p.Socket); err != nil {
			return err
		}
		if p.Containerd.NRISocket != "" && !strings.Contains(p.Logs(), registeredLine) {
			return errors.New("NRI plugin not registered yet")
		}
		return nil
	}); err != nil {
		_ = p.Stop()
		return fmt.Errorf("start pullguard: %w", err)
	}
	return nil
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

// sandboxPolicy is a cluster policy admitting the bed's pause image, as a node's default policies
// admit its sandbox image: without it no pod could start while pullguard enforces.
func sandboxPolicy(pauseRef string) string {
	repo := pauseRef
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	return fmt.Sprintf(`
[[policies]]
kind = "ClusterImagePolicy"
name = "testbed-sandbox"
  [[policies.repositories]]
  name = %q
`, repo)
}

// setsKey reports whether TOML lines set key.
func setsKey(toml, key string) bool {
	for _, l := range strings.Split(toml, "\n") {
		if k, _, ok := strings.Cut(l, "="); ok && strings.TrimSpace(k) == key {
			return true
		}
	}
	return false
}

// Admin returns the body of path on pullguard's admin socket (/readyz, /metrics, /v1/status)
// and its HTTP status code.
func (p *Pullguard) Admin(ctx context.Context, path string) (int, []byte, error) {
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", p.AdminSocket)
	}}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://pullguard"+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("pullguard admin %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return resp.StatusCode, body, err
}
