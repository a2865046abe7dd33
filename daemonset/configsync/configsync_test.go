package configsync

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullguard/pullguard/daemonset/bundle"
	"github.com/pullguard/pullguard/daemonset/hoststate"
)

const (
	upstream   = "unix:///run/k3s/containerd/containerd.sock" // differs from the ConfigMap on purpose
	goodConfig = `[server]
socket = "/run/pullguard/pullguard.sock"
upstream = "unix:///run/containerd/containerd.sock"

[log]
level = "info"

[policy]
dir = "/etc/pullguard/policies"
`
	policy = `apiVersion: pullguard.dev/v1beta1
kind: ClusterImagePolicy
metadata:
  name: default
spec:
  repositories:
  - name: "*"
    policy:
      va:
        enabled: true
`
)

// nodeNRI is what install found of containerd's NRI on the node, which
// the ConfigMap cannot know.
var nodeNRI = hoststate.NodeNRI{Socket: "/run/k3s/nri/nri.sock", ContainerdConfig: "/etc/containerd/config.toml", SandboxImage: "registry.k8s.io/pause:3.9"}

func realValidator(root hoststate.Root) Validator {
	return func(_ context.Context, b *bundle.Bundle, node hoststate.Node) error { return b.Validate(root, node) }
}

// configMap projects files like kubelet does (..data swap), so updates are
// atomic as in a real pod.
func configMap(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	ts, err := os.MkdirTemp(dir, "..ts_")
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(ts, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(filepath.Join(dir, name)); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

type fixture struct {
	root           hoststate.Root
	cfgDir, polDir string
	logs           *bytes.Buffer
	syncer         *Syncer
}

func newFixture(t *testing.T, installed bool) *fixture {
	t.Helper()
	f := &fixture{root: hoststate.Root(t.TempDir()), cfgDir: t.TempDir(), polDir: t.TempDir(), logs: &bytes.Buffer{}}
	if installed {
		if err := hoststate.SaveState(f.root, &hoststate.State{Upstream: upstream, KubeletWired: true, NRIMode: "enforce", NRI: &nodeNRI}); err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(Options{
		Root: f.root, ConfigFile: filepath.Join(f.cfgDir, "config.toml"), PoliciesDir: f.polDir,
		Validate: realValidator(f.root), Interval: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(f.logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	f.syncer = s
	return f
}

func (f *fixture) hostConfig(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(f.root.Path(hoststate.ConfigPath))
	if err != nil {
		return ""
	}
	return string(b)
}

func TestSyncSequence(t *testing.T) {
	f := newFixture(t, true)
	ctx := context.Background()
	good2 := strings.Replace(goodConfig, `level = "info"`, `level = "debug"`, 1)
	steps := []struct {
		name     string
		config   string
		policies map[string]string
		want     Outcome
		hostHas  string // substring the host config must contain afterwards
	}{
		{"first good version", goodConfig, map[string]string{"p.yaml": policy}, Applied, `level = "info"`},
		{"no change", "", nil, Unchanged, `level = "info"`},
		{"unknown key rejected", goodConfig + "\n[cache]\nsize = 10\nbogus = true\n", nil, Rejected, `level = "info"`},
		{"same bad version is not counted twice", "", nil, Unchanged, `level = "info"`},
		{"bad policy rejected", good2, map[string]string{"p.yaml": "kind: ClusterImagePolicy\nspec:\n  repositories: 7\n"}, Rejected, `level = "info"`},
		{"fixed version applied", good2, map[string]string{"p.yaml": policy}, Applied, `level = "debug"`},
	}
	for _, st := range steps {
		if st.config != "" {
			configMap(t, f.cfgDir, map[string]string{"config.toml": st.config})
		}
		if st.policies != nil {
			configMap(t, f.polDir, st.policies)
		}
		got, err := f.syncer.SyncOnce(ctx)
		if err != nil {
			t.Fatalf("%s: SyncOnce: %v", st.name, err)
		}
		if got != st.want {
			t.Errorf("%s: outcome %v, want %v", st.name, got, st.want)
		}
		host := f.hostConfig(t)
		if !strings.Contains(host, st.hostHas) {
			t.Errorf("%s: host config lacks %q:\n%s", st.name, st.hostHas, host)
		}
		for _, want := range []string{`upstream = "` + upstream + `"`, `mode = "enforce"`, `socket = "/run/k3s/nri/nri.sock"`, `sandbox_image = "registry.k8s.io/pause:3.9"`} {
			if !strings.Contains(host, want) {
				t.Errorf("%s: host config lost the node's setting %s:\n%s", st.name, want, host)
			}
		}
		if strings.Contains(host, "bogus") {
			t.Errorf("%s: a rejected config reached the host", st.name)
		}
	}
	stats := f.syncer.Stats()
	if stats.Applied != 2 || stats.Rejected != 2 {
		t.Errorf("stats = %+v, want 2 applied, 2 rejected", stats)
	}
	if !strings.Contains(f.logs.String(), "REJECTED") || !strings.Contains(f.logs.String(), "bogus") {
		t.Errorf("rejection not logged clearly:\n%s", f.logs.String())
	}
	pol, err := os.ReadFile(f.root.Path(hoststate.PoliciesPath + "/p.yaml"))
	if err != nil || string(pol) != policy {
		t.Errorf("host policy = %q, %v", pol, err)
	}
}

func TestSyncRefusesWhenNotInstalled(t *testing.T) {
	f := newFixture(t, false)
	configMap(t, f.cfgDir, map[string]string{"config.toml": goodConfig})
	if _, err := f.syncer.SyncOnce(context.Background()); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Fatalf("err = %v", err)
	}
	if f.hostConfig(t) != "" {
		t.Error("config written to a host without pullguard")
	}
}

func TestRunPicksUpConfigMapUpdates(t *testing.T) {
	f := newFixture(t, true)
	configMap(t, f.cfgDir, map[string]string{"config.toml": goodConfig})
	configMap(t, f.polDir, map[string]string{"p.yaml": policy})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.syncer.Run(ctx) }()

	waitFor(t, func() bool { return strings.Contains(f.hostConfig(t), `level = "info"`) })
	configMap(t, f.cfgDir, map[string]string{"config.toml": strings.Replace(goodConfig, `"info"`, `"warn"`, 1)})
	waitFor(t, func() bool { return strings.Contains(f.hostConfig(t), `level = "warn"`) })
	configMap(t, f.cfgDir, map[string]string{"config.toml": "[server\n"})
	waitFor(t, func() bool { return f.syncer.Stats().Rejected == 1 })
	if !strings.Contains(f.hostConfig(t), `level = "warn"`) {
		t.Error("bad config replaced the good one")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop after cancel")
	}
}

// waitFor polls a condition with a deadline (the syncer itself polls, so
// there is no event to wait on).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		<-tick.C
	}
}
