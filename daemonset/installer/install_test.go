package installer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/pullguard/pullguard/daemonset/bundle"
	"github.com/pullguard/pullguard/daemonset/hoststate"
)

const pgEndpoint = "unix:///run/pullguard/pullguard.sock"

const srcConfig = `# node config from the ConfigMap
[server]
socket = "/run/pullguard/pullguard.sock"
upstream = "unix:///run/containerd/containerd.sock"

[policy]
dir = "/etc/pullguard/policies"
`

const clusterPolicy = `apiVersion: securityenforcement.admission.cloud.ibm.com/v1beta1
kind: ClusterImagePolicy
metadata:
  name: default
spec:
  repositories:
  - name: "*"
    policy:
      trust:
        enabled: true
      va:
        enabled: true
`

// Kubelet files shaped like real nodes.
const (
	kubeadmOldFlags = `KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock --pod-infra-container-image=registry.k8s.io/pause:3.10"
`
	kubeadmNewFlags = `KUBELET_KUBEADM_ARGS="--node-ip=10.0.0.5 --pod-infra-container-image=registry.k8s.io/pause:3.10"
`
	kubeadmConfigNoEndpoint = `apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 0s
    enabled: true
cgroupDriver: systemd
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
kind: KubeletConfiguration
rotateCertificates: true
staticPodPath: /etc/kubernetes/manifests
`
	kubeadmConfigWithEndpoint = `apiVersion: kubelet.config.k8s.io/v1beta1
cgroupDriver: systemd
containerRuntimeEndpoint: unix:///var/run/containerd/containerd.sock
kind: KubeletConfiguration
staticPodPath: /etc/kubernetes/manifests
`
	plainConfig = `# Managed by hand on this node.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# the runtime
containerRuntimeEndpoint: "unix:///run/containerd/containerd.sock"   # containerd
imageServiceEndpoint: unix:///run/containerd/containerd.sock
authentication:
  webhook:
    enabled: true
serializeImagePulls: true`
	crioConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix:///var/run/crio/crio.sock
`
	splitConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
imageServiceEndpoint: unix:///run/other/image.sock
`
)

// node builds a temp host root with the given files. Short paths because
// unix socket paths are limited to 108 bytes.
func node(t *testing.T, files map[string]string) hoststate.Root {
	t.Helper()
	dir, err := os.MkdirTemp("", "pg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for p, content := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	return hoststate.Root(dir)
}

// source writes the DaemonSet's side: binary, config, policies.
func source(t *testing.T, binary, config string) Options {
	t.Helper()
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "pullguard"), []byte(binary), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o644))
	must(t, os.Mkdir(filepath.Join(dir, "policies"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "policies", "cluster.yaml"), []byte(clusterPolicy), 0o644))
	return Options{
		Binary:       filepath.Join(dir, "pullguard"),
		ConfigFile:   filepath.Join(dir, "config.toml"),
		PoliciesDir:  filepath.Join(dir, "policies"),
		Probe:        CRIProber{Interval: 10 * time.Millisecond},
		ReadyTimeout: 5 * time.Second,
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, root hoststate.Root, hostPath string) string {
	t.Helper()
	b, err := os.ReadFile(root.Path(hostPath))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// snapshot returns every regular file under dir except pullguard's own, to
// compare kubelet's side of a node before and after.
func snapshot(t *testing.T, root hoststate.Root, dirs ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, d := range dirs {
		_ = filepath.WalkDir(root.Path(d), func(p string, e os.DirEntry, err error) error {
			if err == nil && e.Type().IsRegular() {
				b, _ := os.ReadFile(p)
				out[p] = string(b)
			}
			return nil
		})
	}
	return out
}

func kubeletEndpoints(t *testing.T, root hoststate.Root, configPath string) (runtime, image string) {
	t.Helper()
	kub, err := inspectKubelet(root, configPath)
	if err != nil {
		t.Fatal(err)
	}
	return kub.runtimeEndpoint, kub.imageEndpoint
}

func TestInstallUninstallLayouts(t *testing.T) {
	tests := []struct {
		name       string
		files      map[string]string
		layout     string
		upstream   string
		wantFlags  string            // exact kubeadm-flags.env after install, "" if not checked
		wantKeys   map[string]string // KubeletConfiguration keys after install
		untouched  []string          // kubelet files that must not change
		kubeletCfg string
	}{
		{
			name: "kubeadm with the endpoint flag",
			files: map[string]string{
				"/var/lib/kubelet/kubeadm-flags.env": kubeadmOldFlags,
				"/var/lib/kubelet/config.yaml":       kubeadmConfigNoEndpoint,
			},
			layout:    LayoutKubeadm,
			upstream:  "unix:///var/run/containerd/containerd.sock",
			wantFlags: `KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=` + pgEndpoint + ` --pod-infra-container-image=registry.k8s.io/pause:3.10"` + "\n",
			untouched: []string{"/var/lib/kubelet/config.yaml"},
		},
		{
			name: "kubeadm with the endpoint in config.yaml",
			files: map[string]string{
				"/var/lib/kubelet/kubeadm-flags.env": kubeadmNewFlags,
				"/var/lib/kubelet/config.yaml":       kubeadmConfigWithEndpoint,
			},
			layout:    LayoutKubeadm,
			upstream:  "unix:///var/run/containerd/containerd.sock",
			wantKeys:  map[string]string{keyRuntime: pgEndpoint, keyImage: pgEndpoint, "cgroupDriver": "systemd"},
			untouched: []string{"/var/lib/kubelet/kubeadm-flags.env"},
		},
		{
			name:     "plain kubelet config with comments",
			files:    map[string]string{"/var/lib/kubelet/config.yaml": plainConfig},
			layout:   LayoutKubeletConfig,
			upstream: "unix:///run/containerd/containerd.sock",
			wantKeys: map[string]string{keyRuntime: pgEndpoint, keyImage: pgEndpoint},
		},
		{
			name:     "plain kubelet config relying on kubelet's default endpoint",
			files:    map[string]string{"/var/lib/kubelet/config.yaml": kubeadmConfigNoEndpoint},
			layout:   LayoutKubeletConfig,
			upstream: DefaultKubeletRuntimeEndpoint,
			wantKeys: map[string]string{keyRuntime: pgEndpoint, keyImage: pgEndpoint, "clusterDomain": "cluster.local"},
		},
		{
			name:       "kubelet config in a custom place, CRI-O upstream",
			files:      map[string]string{"/etc/kubelet/custom.yaml": crioConfig},
			layout:     LayoutKubeletConfig,
			upstream:   "unix:///var/run/crio/crio.sock",
			wantKeys:   map[string]string{keyRuntime: pgEndpoint, keyImage: pgEndpoint},
			kubeletCfg: "/etc/kubelet/custom.yaml",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			root := node(t, tc.files)
			original := snapshot(t, root, "/var/lib/kubelet", "/etc/kubelet")
			svc := newFakeServices(t, root)
			opts := source(t, "pullguard-binary-v1", srcConfig)
			opts.Root, opts.Services, opts.KubeletConfig = root, svc, tc.kubeletCfg
			opts.Validate = func(_ context.Context, b *bundle.Bundle, node hoststate.Node) error { return b.Validate(root, node) }

			res, err := Install(ctx, opts)
			if err != nil {
				t.Fatalf("Install: %v", err)
			}
			if res.Layout != tc.layout || res.Upstream != tc.upstream || !res.KubeletRewired {
				t.Fatalf("result = %+v, want layout %s upstream %s rewired", res, tc.layout, tc.upstream)
			}
			// pullguard's files.
			if got := read(t, root, hoststate.BinaryPath); got != "pullguard-binary-v1" {
				t.Errorf("binary = %q", got)
			}
			if fi, _ := os.Stat(root.Path(hoststate.BinaryPath)); fi.Mode().Perm() != 0o755 {
				t.Errorf("binary mode = %v", fi.Mode())
			}
			cfg := read(t, root, hoststate.ConfigPath)
			if !strings.Contains(cfg, `upstream = "`+tc.upstream+`"`) || strings.Contains(cfg, `upstream = "unix:///run/containerd/containerd.sock"`) && tc.upstream != "unix:///run/containerd/containerd.sock" {
				t.Errorf("config upstream not set to %s:\n%s", tc.upstream, cfg)
			}
			if got := read(t, root, hoststate.PoliciesPath+"/cluster.yaml"); got != clusterPolicy {
				t.Errorf("policy = %q", got)
			}
			unit := read(t, root, hoststate.UnitPath)
			for _, want := range []string{"Restart=always", "Before=kubelet.service", "WantedBy=multi-user.target", "ExecStart=/usr/local/bin/pullguard serve --config /etc/pullguard/config.toml"} {
				if !strings.Contains(unit, want) {
					t.Errorf("unit lacks %q", want)
				}
			}
			// kubelet rewired, only after pullguard answered.
			rt, img := kubeletEndpoints(t, root, tc.kubeletCfg)
			if !sameEndpoint(rt, pgEndpoint) || !sameEndpoint(img, pgEndpoint) {
				t.Errorf("kubelet endpoints = %s, %s", rt, img)
			}
			if tc.wantFlags != "" {
				if got := read(t, root, KubeadmFlagsPath); got != tc.wantFlags {
					t.Errorf("flags =\n%s\nwant\n%s", got, tc.wantFlags)
				}
			}
			if tc.wantKeys != nil {
				cfgPath := firstNonEmpty(tc.kubeletCfg, "/var/lib/kubelet/config.yaml")
				m := map[string]any{}
				must(t, yaml.Unmarshal([]byte(read(t, root, cfgPath)), &m))
				for k, v := range tc.wantKeys {
					if m[k] != v {
						t.Errorf("%s = %v, want %s", k, m[k], v)
					}
				}
			}
			for _, p := range tc.untouched {
				if got := read(t, root, p); got != tc.files[p] {
					t.Errorf("%s changed:\n%s", p, got)
				}
			}
			if !slices.Equal(svc.kubeletSeenServing, []bool{true}) {
				t.Errorf("kubelet restarts saw pullguard serving = %v, want one restart while serving", svc.kubeletSeenServing)
			}
			calls := svc.Calls()
			if i, j := slices.Index(calls, "start pullguard.service"), slices.Index(calls, "restart kubelet.service"); i < 0 && slices.Index(calls, "restart pullguard.service") < 0 || j < 0 {
				t.Errorf("calls = %v", calls)
			}

			// Idempotent: a second install changes nothing and restarts nothing.
			afterFirst := snapshot(t, root, "/")
			nCalls := len(svc.Calls())
			res2, err := Install(ctx, opts)
			if err != nil {
				t.Fatalf("second Install: %v", err)
			}
			if res2.Changed || res2.KubeletRewired || res2.Upstream != tc.upstream {
				t.Errorf("second install result = %+v", res2)
			}
			if diff := diffSnap(afterFirst, snapshot(t, root, "/")); diff != "" {
				t.Errorf("second install changed files: %s", diff)
			}
			for _, c := range svc.Calls()[nCalls:] {
				if strings.HasPrefix(c, "restart") || strings.HasPrefix(c, "stop") {
					t.Errorf("second install called %q", c)
				}
			}

			// Uninstall: kubelet byte for byte, restarted before pullguard stops.
			nCalls = len(svc.Calls())
			if err := Uninstall(ctx, Options{Root: root, Services: svc, KubeletConfig: tc.kubeletCfg}); err != nil {
				t.Fatalf("Uninstall: %v", err)
			}
			if diff := diffSnap(original, snapshot(t, root, "/var/lib/kubelet", "/etc/kubelet")); diff != "" {
				t.Errorf("kubelet files not restored byte for byte: %s", diff)
			}
			calls = svc.Calls()[nCalls:]
			ki, pi := slices.Index(calls, "restart kubelet.service"), slices.Index(calls, "stop pullguard.service")
			if ki < 0 || pi < 0 || ki > pi {
				t.Errorf("uninstall calls = %v, want kubelet restart before pullguard stop", calls)
			}
			for _, p := range []string{hoststate.BinaryPath, hoststate.ConfigDir, hoststate.UnitPath, hoststate.StateDir} {
				if _, err := os.Lstat(root.Path(p)); err == nil {
					t.Errorf("%s still exists after uninstall", p)
				}
			}
			// A second uninstall is a no-op.
			nCalls = len(svc.Calls())
			if err := Uninstall(ctx, Options{Root: root, Services: svc, KubeletConfig: tc.kubeletCfg}); err != nil {
				t.Fatalf("second Uninstall: %v", err)
			}
			if extra := svc.Calls()[nCalls:]; len(extra) != 0 {
				t.Errorf("second uninstall called %v", extra)
			}
		})
	}
}

func diffSnap(a, b map[string]string) string {
	var out []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			out = append(out, "removed "+k)
		} else if w != v {
			out = append(out, "changed "+k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, "added "+k)
		}
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

func TestInstallRefuses(t *testing.T) {
	tests := []struct {
		name      string
		files     map[string]string
		wantErr   error
		wantInMsg string
	}{
		{"k3s", map[string]string{"/etc/rancher/k3s/config.yaml": "write-kubeconfig-mode: \"0644\"\n"}, ErrUnsupportedLayout, "/run/k3s/containerd/containerd.sock"},
		{"rke2", map[string]string{"/etc/rancher/rke2/config.yaml": "token: x\n", "/var/lib/kubelet/config.yaml": plainConfig}, ErrUnsupportedLayout, "rke2"},
		{"no kubelet", map[string]string{"/etc/hostname": "n1\n"}, ErrUnsupportedLayout, "--kubelet-config"},
		{"split runtime and image endpoints", map[string]string{"/var/lib/kubelet/config.yaml": splitConfig}, ErrUnsupportedLayout, "different runtime"},
		{"not a KubeletConfiguration", map[string]string{"/var/lib/kubelet/config.yaml": "kind: Pod\n"}, nil, "not a KubeletConfiguration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := node(t, tc.files)
			before := snapshot(t, root, "/")
			svc := newFakeServices(t, root)
			opts := source(t, "bin", srcConfig)
			opts.Root, opts.Services = root, svc
			_, err := Install(context.Background(), opts)
			if err == nil {
				t.Fatal("Install succeeded")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantInMsg) {
				t.Errorf("err = %v, want it to mention %q", err, tc.wantInMsg)
			}
			if diff := diffSnap(before, snapshot(t, root, "/")); diff != "" {
				t.Errorf("refused install changed the host: %s", diff)
			}
			if c := svc.Calls(); len(c) != 0 {
				t.Errorf("refused install called services: %v", c)
			}
		})
	}
}

func TestInstallFailureLeavesKubeletUntouched(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(*fakeServices, *Options)
		wantMsg string
	}{
		{"pullguard never answers", func(f *fakeServices, o *Options) { f.broken = true; o.ReadyTimeout = 300 * time.Millisecond }, "did not answer"},
		{"pullguard fails to start", func(f *fakeServices, o *Options) {
			f.fail["start pullguard.service"] = errors.New("unit failed")
			f.fail["restart pullguard.service"] = errors.New("unit failed")
		}, "start pullguard"},
		{"kubelet restart fails", func(f *fakeServices, o *Options) { f.fail["restart kubelet.service"] = errors.New("kubelet exited") }, "restart kubelet"},
		{"config rejected", func(f *fakeServices, o *Options) {
			o.Validate = func(context.Context, *bundle.Bundle, hoststate.Node) error { return errors.New("unknown key server.bogus") }
		}, "unknown key server.bogus"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{
				"/var/lib/kubelet/kubeadm-flags.env": kubeadmOldFlags,
				"/var/lib/kubelet/config.yaml":       kubeadmConfigWithEndpoint,
			}
			root := node(t, files)
			original := snapshot(t, root, "/var/lib/kubelet")
			svc := newFakeServices(t, root)
			opts := source(t, "bin", srcConfig)
			opts.Root, opts.Services = root, svc
			tc.setup(svc, &opts)
			_, err := Install(context.Background(), opts)
			if err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.wantMsg)
			}
			if !strings.Contains(err.Error(), "kubelet") {
				t.Errorf("error does not say what happened to kubelet: %v", err)
			}
			if diff := diffSnap(original, snapshot(t, root, "/var/lib/kubelet")); diff != "" {
				t.Errorf("kubelet files changed: %s", diff)
			}
			for i, serving := range svc.kubeletSeenServing {
				if i == 0 && !serving {
					t.Errorf("kubelet restarted while pullguard was not serving")
				}
			}
			calls := svc.Calls()
			if slices.Contains(calls, "start pullguard.service") && !slices.Contains(calls, "stop pullguard.service") {
				t.Errorf("pullguard left running after a failed install: %v", calls)
			}
			// The node can still be installed once the problem is gone.
			svc.broken, svc.fail = false, map[string]error{}
			opts.Validate, opts.ReadyTimeout = nil, 5*time.Second
			if _, err := Install(context.Background(), opts); err != nil {
				t.Fatalf("install after fixing: %v", err)
			}
			st, err := hoststate.LoadState(root)
			if err != nil || st == nil || !st.KubeletWired {
				t.Fatalf("state = %+v, %v", st, err)
			}
			for _, b := range st.Backups {
				if got := read(t, root, b.BackupPath); got != files[b.HostPath] {
					t.Errorf("backup of %s is not the original", b.HostPath)
				}
			}
		})
	}
}

func TestUpgradeRestartsPullguardNotKubelet(t *testing.T) {
	root := node(t, map[string]string{"/var/lib/kubelet/config.yaml": plainConfig})
	svc := newFakeServices(t, root)
	opts := source(t, "v1", srcConfig)
	opts.Root, opts.Services = root, svc
	if _, err := Install(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	backup := read(t, root, hoststate.BackupDir+"/"+backupName("/var/lib/kubelet/config.yaml"))
	must(t, os.WriteFile(opts.Binary, []byte("v2"), 0o755))
	n := len(svc.Calls())
	res, err := Install(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Changed || res.KubeletRewired {
		t.Errorf("upgrade result = %+v", res)
	}
	calls := svc.Calls()[n:]
	if !slices.Contains(calls, "restart pullguard.service") || slices.Contains(calls, "restart kubelet.service") {
		t.Errorf("upgrade calls = %v", calls)
	}
	if got := read(t, root, hoststate.BinaryPath); got != "v2" {
		t.Errorf("binary = %q", got)
	}
	if got := read(t, root, hoststate.BackupDir+"/"+backupName("/var/lib/kubelet/config.yaml")); got != backup || got != plainConfig {
		t.Errorf("upgrade overwrote the original backup")
	}
}

func TestUpgradeToBrokenBinaryRollsBack(t *testing.T) {
	root := node(t, map[string]string{"/var/lib/kubelet/config.yaml": plainConfig})
	svc := newFakeServices(t, root)
	opts := source(t, "v1", srcConfig)
	opts.Root, opts.Services = root, svc
	if _, err := Install(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	wired := read(t, root, "/var/lib/kubelet/config.yaml")
	must(t, os.WriteFile(opts.Binary, []byte("v2-broken"), 0o755))
	svc.broken = true
	opts.ReadyTimeout = 300 * time.Millisecond
	if _, err := Install(context.Background(), opts); err == nil {
		t.Fatal("upgrade to a binary that never answers succeeded")
	}
	if got := read(t, root, hoststate.BinaryPath); got != "v1" {
		t.Errorf("binary after failed upgrade = %q, want v1 back", got)
	}
	if got := read(t, root, "/var/lib/kubelet/config.yaml"); got != wired {
		t.Errorf("kubelet config changed by a failed upgrade")
	}
}

func TestUninstallWithoutStateRefusesWhenKubeletUsesPullguard(t *testing.T) {
	cfg := "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncontainerRuntimeEndpoint: " + pgEndpoint + "\n"
	root := node(t, map[string]string{"/var/lib/kubelet/config.yaml": cfg, hoststate.BinaryPath: "bin"})
	svc := newFakeServices(t, root)
	err := Uninstall(context.Background(), Options{Root: root, Services: svc})
	if err == nil || !strings.Contains(err.Error(), "no install state") {
		t.Fatalf("err = %v", err)
	}
	if len(svc.Calls()) != 0 || read(t, root, hoststate.BinaryPath) != "bin" {
		t.Errorf("refused uninstall changed something: %v", svc.Calls())
	}
}

func TestUninstallAfterRolledBackInstallKeepsLaterKubeletEdits(t *testing.T) {
	root := node(t, map[string]string{"/var/lib/kubelet/config.yaml": plainConfig})
	svc := newFakeServices(t, root)
	svc.fail["restart kubelet.service"] = errors.New("kubelet exited")
	opts := source(t, "bin", srcConfig)
	opts.Root, opts.Services = root, svc
	if _, err := Install(context.Background(), opts); err == nil {
		t.Fatal("install succeeded despite the kubelet restart failure")
	}
	// The administrator edits kubelet afterwards; uninstall must not roll that back.
	edited := plainConfig + "\nmaxPods: 50\n"
	must(t, os.WriteFile(root.Path("/var/lib/kubelet/config.yaml"), []byte(edited), 0o640))
	svc.fail = map[string]error{}
	if err := Uninstall(context.Background(), Options{Root: root, Services: svc}); err != nil {
		t.Fatal(err)
	}
	if got := read(t, root, "/var/lib/kubelet/config.yaml"); got != edited {
		t.Errorf("uninstall restored a stale backup over a later edit:\n%s", got)
	}
	if _, err := os.Stat(root.Path(hoststate.BinaryPath)); err == nil {
		t.Error("pullguard binary left behind")
	}
}
