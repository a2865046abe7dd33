package installer

import (
	"bytes"
	"context"
	"errors"
	"github.com/pullguard/pullguard/plugin/nri/nritest"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"sigs.k8s.io/yaml"

	"github.com/pullguard/pullguard/config"
	"github.com/pullguard/pullguard/daemonset/bundle"
	"github.com/pullguard/pullguard/daemonset/hoststate"
	"github.com/pullguard/pullguard/plugin/nri"
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

// Runtimes as they answer CRI Version.
var (
	containerd242 = RuntimeInfo{Name: "containerd", Version: "v2.4.2"}
	containerd21  = RuntimeInfo{Name: "containerd", Version: "v2.1.4"}
)

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
	// oldLayoutConfig is a kubelet an earlier pullguard wired: both
	// endpoints at its socket.
	oldLayoutConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix:///run/pullguard/pullguard.sock
imageServiceEndpoint: unix:///run/pullguard/pullguard.sock
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

// withContainerd copies testdata/containerd/NAME (a tree from /) into the
// host root.
func withContainerd(t *testing.T, root hoststate.Root, name string) {
	t.Helper()
	src := filepath.Join("testdata", "containerd", name)
	err := filepath.WalkDir(src, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		dst := root.Path("/" + filepath.ToSlash(rel))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
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

// setup is a node with kubelet files, containerd's config fixture (""
// for none) and containerd answering as rt, and install's options for it.
func setup(t *testing.T, kubelet map[string]string, ctdFixture string, rt RuntimeInfo) (hoststate.Root, *fakeNode, Options) {
	t.Helper()
	root := node(t, kubelet)
	if ctdFixture != "" {
		withContainerd(t, root, ctdFixture)
	}
	f := newFakeNode(t, root, rt)
	opts := source(t, "pullguard-binary-v1", srcConfig)
	opts.Root, opts.Services = root, f
	opts.Validate = func(_ context.Context, b *bundle.Bundle, n hoststate.Node) error { return b.Validate(root, n) }
	return root, f, opts
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

// snapshot returns every regular file under the dirs, to compare a node
// before and after.
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

func kubeletEndpoints(t *testing.T, root hoststate.Root, configPath string) (runtime, image string) {
	t.Helper()
	kub, err := inspectKubelet(root, configPath)
	if err != nil {
		t.Fatal(err)
	}
	return kub.runtimeEndpoint, kub.imageEndpoint
}

// containerdNRI reads containerd's config on the node with serve's reader.
func containerdNRI(t *testing.T, root hoststate.Root) *nri.ContainerdNRI {
	t.Helper()
	c, err := nri.ReadContainerdNRIFS(os.DirFS(string(root)), DefaultContainerdConfig)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// installedConfig is the config install wrote, as serve loads it.
func installedConfig(t *testing.T, root hoststate.Root) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte(read(t, root, hoststate.ConfigPath)), "config.toml")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// before says whether call a comes before call b in calls (both present).
func before(calls []string, a, b string) bool {
	i, j := slices.Index(calls, a), slices.Index(calls, b)
	return i >= 0 && j >= 0 && i < j
}

func pullguardStarted(calls []string) string {
	for _, c := range calls {
		if c == "start pullguard.service" || c == "restart pullguard.service" {
			return c
		}
	}
	return ""
}

func TestInstallUninstallKubeletLayouts(t *testing.T) {
	tests := []struct {
		name      string
		files     map[string]string
		layout    string
		upstream  string
		wantFlags string            // exact kubeadm-flags.env after install, "" if not checked
		wantKeys  map[string]string // KubeletConfiguration keys after install
		untouched []string          // kubelet files that must not change
		cfgPath   string            // --kubelet-config
	}{
		{
			name: "kubeadm with the runtime flag: the image flag beside it",
			files: map[string]string{
				"/var/lib/kubelet/kubeadm-flags.env": kubeadmOldFlags,
				"/var/lib/kubelet/config.yaml":       kubeadmConfigNoEndpoint,
			},
			layout:   LayoutKubeadm,
			upstream: "unix:///var/run/containerd/containerd.sock",
			wantFlags: `KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock --pod-infra-container-image=registry.k8s.io/pause:3.10 ` +
				`--image-service-endpoint=` + pgEndpoint + `"` + "\n",
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
			wantKeys:  map[string]string{keyRuntime: "unix:///var/run/containerd/containerd.sock", keyImage: pgEndpoint, "cgroupDriver": "systemd"},
			untouched: []string{"/var/lib/kubelet/kubeadm-flags.env"},
		},
		{
			name:     "plain kubelet config with comments",
			files:    map[string]string{"/var/lib/kubelet/config.yaml": plainConfig},
			layout:   LayoutKubeletConfig,
			upstream: "unix:///run/containerd/containerd.sock",
			wantKeys: map[string]string{keyRuntime: "unix:///run/containerd/containerd.sock", keyImage: pgEndpoint},
		},
		{
			name:     "plain kubelet config relying on kubelet's default endpoint",
			files:    map[string]string{"/var/lib/kubelet/config.yaml": kubeadmConfigNoEndpoint},
			layout:   LayoutKubeletConfig,
			upstream: DefaultKubeletRuntimeEndpoint,
			wantKeys: map[string]string{keyImage: pgEndpoint, "clusterDomain": "cluster.local"},
		},
		{
			name:    "kubelet config in a custom place",
			files:   map[string]string{"/etc/kubelet/custom.yaml": strings.Replace(crioConfig, "/var/run/crio/crio.sock", "/run/containerd/containerd.sock", 1)},
			layout:  LayoutKubeletConfig,
			cfgPath: "/etc/kubelet/custom.yaml", upstream: "unix:///run/containerd/containerd.sock",
			wantKeys: map[string]string{keyRuntime: "unix:///run/containerd/containerd.sock", keyImage: pgEndpoint},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			root, f, opts := setup(t, tc.files, "default-2.4.2", containerd242)
			opts.KubeletConfig = tc.cfgPath
			original := snapshot(t, root, "/")

			res, err := Install(ctx, opts)
			if err != nil {
				t.Fatalf("Install: %v", err)
			}
			if res.Layout != tc.layout || res.Upstream != tc.upstream || !res.KubeletRewired || !res.ContainerdChanged ||
				res.Mode != config.NRIEnforce || res.DropIn != DefaultNRIDropIn || res.Runtime != containerd242 {
				t.Fatalf("result = %+v", res)
			}
			// pullguard's files.
			if got := read(t, root, hoststate.BinaryPath); got != "pullguard-binary-v1" {
				t.Errorf("binary = %q", got)
			}
			if fi, _ := os.Stat(root.Path(hoststate.BinaryPath)); fi.Mode().Perm() != 0o755 {
				t.Errorf("binary mode = %v", fi.Mode())
			}
			cfg := installedConfig(t, root)
			if cfg.Server.Upstream != tc.upstream || cfg.NRI.Mode != config.NRIEnforce || cfg.NRI.Socket != defaultNRISocket ||
				cfg.NRI.ContainerdConfig != DefaultContainerdConfig || cfg.NRI.SandboxImage != "registry.k8s.io/pause:3.10.2" {
				t.Errorf("installed config: server %+v nri %+v", cfg.Server, cfg.NRI)
			}
			if got := read(t, root, hoststate.PoliciesPath+"/cluster.yaml"); got != clusterPolicy {
				t.Errorf("policy = %q", got)
			}
			// containerd: the default config imports conf.d, so the
			// drop-in goes there and config.toml stays as it was.
			if got := read(t, root, DefaultContainerdConfig); got != original[root.Path(DefaultContainerdConfig)] {
				t.Error("containerd's config.toml changed although it imports conf.d")
			}
			if c := containerdNRI(t, root); !c.Requires("pullguard", "10") || !slices.Contains(c.Files, DefaultNRIDropIn) {
				t.Errorf("containerd's config read as %+v, want pullguard required through the drop-in", c)
			}
			// kubelet: the image endpoint only, after pullguard was ready.
			rt, img := kubeletEndpoints(t, root, tc.cfgPath)
			if rt != tc.upstream || !sameEndpoint(img, pgEndpoint) {
				t.Errorf("kubelet endpoints = runtime %s, image %s", rt, img)
			}
			if tc.wantFlags != "" {
				if got := read(t, root, KubeadmFlagsPath); got != tc.wantFlags {
					t.Errorf("flags =\n%s\nwant\n%s", got, tc.wantFlags)
				}
			}
			if tc.wantKeys != nil {
				m := map[string]any{}
				must(t, yaml.Unmarshal([]byte(read(t, root, firstNonEmpty(tc.cfgPath, "/var/lib/kubelet/config.yaml"))), &m))
				for k, v := range tc.wantKeys {
					if m[k] != v {
						t.Errorf("%s = %v, want %s", k, m[k], v)
					}
				}
				if _, ok := tc.wantKeys[keyRuntime]; !ok && m[keyRuntime] != nil {
					t.Errorf("install set %s = %v", keyRuntime, m[keyRuntime])
				}
			}
			for _, p := range tc.untouched {
				if got := read(t, root, p); got != tc.files[p] {
					t.Errorf("%s changed:\n%s", p, got)
				}
			}
			if !slices.Equal(f.kubeletSawReady, []bool{true}) || !slices.Equal(f.containerdRequired, []bool{true}) {
				t.Errorf("kubelet restarts saw pullguard ready = %v; containerd restarts requiring pullguard = %v", f.kubeletSawReady, f.containerdRequired)
			}
			calls := f.Calls()
			if pg := pullguardStarted(calls); !before(calls, "restart containerd.service", pg) || !before(calls, pg, "restart kubelet.service") {
				t.Errorf("calls = %v, want containerd restarted, then pullguard started, then kubelet restarted", calls)
			}

			// Idempotent: a second install changes nothing and restarts nothing.
			afterFirst := snapshot(t, root, "/")
			n := len(f.Calls())
			res2, err := Install(ctx, opts)
			if err != nil {
				t.Fatalf("second Install: %v", err)
			}
			if res2.Changed || res2.KubeletRewired || res2.ContainerdChanged || res2.Upstream != tc.upstream {
				t.Errorf("second install result = %+v", res2)
			}
			if diff := diffSnap(afterFirst, snapshot(t, root, "/")); diff != "" {
				t.Errorf("second install changed files: %s", diff)
			}
			for _, c := range f.Calls()[n:] {
				if strings.HasPrefix(c, "restart") || strings.HasPrefix(c, "stop") {
					t.Errorf("second install called %q", c)
				}
			}

			// Uninstall: every file as it was, kubelet restarted before
			// containerd, containerd before pullguard stops.
			n = len(f.Calls())
			if err := Uninstall(ctx, Options{Root: root, Services: f, KubeletConfig: tc.cfgPath}); err != nil {
				t.Fatalf("Uninstall: %v", err)
			}
			if diff := diffSnap(original, snapshot(t, root, "/")); diff != "" {
				t.Errorf("node not restored byte for byte: %s", diff)
			}
			if exists(root.Path("/etc/containerd/conf.d")) {
				t.Error("the drop-in directory install created is still there")
			}
			calls = f.Calls()[n:]
			if !before(calls, "restart kubelet.service", "restart containerd.service") || !before(calls, "restart containerd.service", "stop pullguard.service") {
				t.Errorf("uninstall calls = %v, want kubelet, then containerd restarted, then pullguard stopped", calls)
			}
			if got := f.containerdRequired[len(f.containerdRequired)-1]; got {
				t.Error("containerd still requires pullguard after uninstall")
			}
			// A second uninstall is a no-op.
			n = len(f.Calls())
			if err := Uninstall(ctx, Options{Root: root, Services: f, KubeletConfig: tc.cfgPath}); err != nil {
				t.Fatalf("second Uninstall: %v", err)
			}
			if extra := f.Calls()[n:]; len(extra) != 0 {
				t.Errorf("second uninstall called %v", extra)
			}
		})
	}
}

// dropInSection parses the drop-in's NRI table.
func dropInSection(t *testing.T, root hoststate.Root, p string) (version int64, section map[string]any) {
	t.Helper()
	var doc map[string]any
	if _, err := toml.Decode(read(t, root, p), &doc); err != nil {
		t.Fatal(err)
	}
	plugins, _ := doc["plugins"].(map[string]any)
	section, _ = plugins[nri.ContainerdPluginID].(map[string]any)
	version, _ = doc["version"].(int64)
	return version, section
}

func TestInstallContainerdConfigs(t *testing.T) {
	kubelet := map[string]string{"/var/lib/kubelet/config.yaml": plainConfig}
	tests := []struct {
		name       string
		fixture    string
		edit       func(t *testing.T, root hoststate.Root) // after the fixture is in place
		dropIn     string
		mainEdited bool
		version    int64
		socket     string
		sandbox    string
		// keys the drop-in must carry (top level of the NRI table, and its
		// default_validator).
		keys, validator map[string]any
		warning         string
	}{
		{
			name: "containerd 2.4.2's default config: drop-in in conf.d", fixture: "default-2.4.2",
			dropIn: DefaultNRIDropIn, version: 4, socket: defaultNRISocket, sandbox: "registry.k8s.io/pause:3.10.2",
			keys: map[string]any{"plugin_path": "/opt/nri/plugins", "plugin_config_path": "/etc/nri/conf.d", "plugin_request_timeout": "2s",
				"plugin_registration_timeout": "5s", "disable_connections": false, "disable": false},
			validator: map[string]any{"reject_namespace_adjustment": false, "required_plugins": []any{"pullguard"}, "tolerate_missing_plugins_annotation": ""},
		},
		{
			name: "version 2 file without imports: imports added", fixture: "v2",
			dropIn: DefaultNRIDropIn, mainEdited: true, version: 3, socket: defaultNRISocket, sandbox: "registry.k8s.io/pause:3.9",
			keys:      map[string]any{"disable": false, "socket_path": defaultNRISocket, "plugin_request_timeout": "2s"},
			validator: map[string]any{"enable": true, "required_plugins": []any{"pullguard"}},
		},
		{
			name: "an NRI section set up by hand: every key carried over", fixture: "nri-section",
			dropIn: DefaultNRIDropIn, mainEdited: true, version: 3, socket: "/run/nri/custom.sock", sandbox: "registry.example.com/k8s/pause:3.10",
			keys: map[string]any{"disable": false, "socket_path": "/run/nri/custom.sock", "plugin_path": "/opt/nri/plugins",
				"plugin_config_path": "/etc/nri/conf.d", "plugin_request_timeout": "3s"},
			validator: map[string]any{"enable": true, "reject_oci_hook_adjustment": true, "required_plugins": []any{"20-audit", "pullguard"},
				"tolerate_missing_plugins_annotation": "nri.example.com/break-glass"},
			warning: "nri.example.com/break-glass",
		},
		{
			name: "imports with a glob: drop-in beside the runtime's", fixture: "imports",
			dropIn: "/etc/containerd/runtime.d/" + NRIDropInName, version: 3, socket: "/run/nri/site.sock", sandbox: "registry.k8s.io/pause:3.10.1",
			keys:      map[string]any{"socket_path": "/run/nri/site.sock"},
			validator: map[string]any{"required_plugins": []any{"other", "pullguard"}},
		},
		{
			name: "a file read after the glob sets NRI keys: drop-in imported last", fixture: "imports",
			edit: func(t *testing.T, root hoststate.Root) {
				must(t, os.WriteFile(root.Path("/etc/containerd/site.toml"),
					[]byte("version = 3\n[plugins.'io.containerd.nri.v1.nri']\n  plugin_registration_timeout = '8s'\n"+
						"  [plugins.'io.containerd.nri.v1.nri'.default_validator]\n    required_plugins = ['site']\n"), 0o644))
			},
			dropIn: DefaultNRIDropIn, mainEdited: true, version: 3, socket: "/run/nri/site.sock", sandbox: "registry.k8s.io/pause:3.10.1",
			keys:      map[string]any{"socket_path": "/run/nri/site.sock", "plugin_registration_timeout": "8s"},
			validator: map[string]any{"required_plugins": []any{"site", "pullguard"}},
		},
		{
			name: "no containerd config at all: one is created", fixture: "",
			dropIn: DefaultNRIDropIn, mainEdited: true, version: 3, socket: defaultNRISocket, sandbox: "",
			validator: map[string]any{"enable": true, "required_plugins": []any{"pullguard"}},
		},
	}
	bin := nritest.ContainerdBinary(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			root, f, opts := setup(t, kubelet, tc.fixture, containerd242)
			if tc.edit != nil {
				tc.edit(t, root)
				must(t, f.loadContainerdConfig())
			}
			original := snapshot(t, root, "/")
			res, err := Install(ctx, opts)
			if err != nil {
				t.Fatalf("Install: %v", err)
			}
			if res.DropIn != tc.dropIn {
				t.Errorf("drop-in at %s, want %s", res.DropIn, tc.dropIn)
			}
			c := containerdNRI(t, root)
			if !c.Requires("pullguard", "10") || len(c.Problems("pullguard", "10")) != 0 || firstNonEmpty(c.SocketPath, defaultNRISocket) != tc.socket {
				t.Errorf("containerd's config read as %+v", c)
			}
			mainPath := root.Path(DefaultContainerdConfig)
			mainNow, _ := os.ReadFile(mainPath)
			if edited := string(mainNow) != original[mainPath]; edited != tc.mainEdited {
				t.Errorf("main config edited = %t, want %t:\n%s", edited, tc.mainEdited, mainNow)
			}
			if tc.mainEdited && original[mainPath] != "" {
				// A minimal edit: the original bytes are all still there,
				// in order, around the added import.
				if !isSubsequence(original[mainPath], string(mainNow)) {
					t.Errorf("main config edit is not minimal:\n%s", mainNow)
				}
			}
			version, section := dropInSection(t, root, tc.dropIn)
			if version != tc.version {
				t.Errorf("drop-in version = %d, want %d", version, tc.version)
			}
			for k, v := range tc.keys {
				if !equalTOML(section[k], v) {
					t.Errorf("drop-in %s = %#v, want %#v", k, section[k], v)
				}
			}
			validator, _ := section["default_validator"].(map[string]any)
			for k, v := range tc.validator {
				if !equalTOML(validator[k], v) {
					t.Errorf("drop-in default_validator.%s = %#v, want %#v", k, validator[k], v)
				}
			}
			cfg := installedConfig(t, root)
			if cfg.NRI.Socket != tc.socket || cfg.NRI.SandboxImage != tc.sandbox || cfg.NRI.ContainerdConfig != DefaultContainerdConfig {
				t.Errorf("installed [nri] = %+v", cfg.NRI)
			}
			if tc.warning != "" && !slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.Contains(w, tc.warning) }) {
				t.Errorf("warnings %q do not mention %s", res.Warnings, tc.warning)
			}
			// The backups are the files as they were, byte for byte.
			st, err := hoststate.LoadState(root)
			if err != nil || st == nil || !st.ContainerdWired {
				t.Fatalf("state = %+v, %v", st, err)
			}
			for _, b := range st.ContainerdBackups {
				orig, had := original[root.Path(b.HostPath)]
				if b.Absent == had {
					t.Errorf("backup of %s: absent = %t, but the file existed = %t", b.HostPath, b.Absent, had)
				}
				if !b.Absent && read(t, root, b.BackupPath) != orig {
					t.Errorf("backup of %s is not the original", b.HostPath)
				}
			}
			if bin != "" && tc.fixture != "" {
				// containerd's own loader agrees.
				d := dumpContainerd(t, bin, root)
				if !d.Requires("pullguard", "10") || firstNonEmpty(d.SocketPath, defaultNRISocket) != tc.socket {
					t.Errorf("containerd config dump reads %+v", d)
				}
			}

			// A second install changes nothing.
			afterFirst := snapshot(t, root, "/")
			res2, err := Install(ctx, opts)
			if err != nil || res2.Changed || res2.ContainerdChanged {
				t.Fatalf("second install: %+v, %v", res2, err)
			}
			if diff := diffSnap(afterFirst, snapshot(t, root, "/")); diff != "" {
				t.Errorf("second install changed files: %s", diff)
			}

			if err := Uninstall(ctx, Options{Root: root, Services: f}); err != nil {
				t.Fatalf("Uninstall: %v", err)
			}
			if diff := diffSnap(original, snapshot(t, root, "/")); diff != "" {
				t.Errorf("uninstall did not restore every file byte for byte: %s", diff)
			}
			if tc.fixture != "" {
				if c := containerdNRI(t, root); c.Requires("pullguard", "10") {
					t.Error("containerd still requires pullguard after uninstall")
				}
			}
		})
	}
}

// equalTOML compares decoded TOML values ([]any of strings vs []any).
func equalTOML(a, b any) bool {
	la, okA := a.([]any)
	lb, okB := b.([]any)
	if okA && okB {
		return slices.Equal(la, lb)
	}
	return a == b
}

// isSubsequence says whether every byte of a appears in b in order.
func isSubsequence(a, b string) bool {
	i := 0
	for j := 0; j < len(b) && i < len(a); j++ {
		if a[i] == b[j] {
			i++
		}
	}
	return i == len(a)
}

func TestInstallRefusesBeforeWriting(t *testing.T) {
	plain := map[string]string{"/var/lib/kubelet/config.yaml": plainConfig}
	tests := []struct {
		name      string
		files     map[string]string
		fixture   string
		rt        RuntimeInfo
		socket    string // where the runtime answers; "" the default
		config    string // pullguard's config; "" srcConfig
		wantErr   error
		wantInMsg []string
	}{
		{name: "containerd older than 2.2", files: plain, fixture: "default-2.4.2", rt: containerd21,
			wantErr: ErrNoNRIValidation, wantInMsg: []string{"2.1.4", "older than 2.2", "--pull-only"}},
		{name: "containerd 1.7", files: plain, fixture: "v2", rt: RuntimeInfo{Name: "containerd", Version: "1.7.27"},
			wantErr: ErrNoNRIValidation, wantInMsg: []string{"1.7.27", "--pull-only"}},
		{name: "not containerd", files: map[string]string{"/var/lib/kubelet/config.yaml": crioConfig}, rt: RuntimeInfo{Name: "cri-o", Version: "1.31.0"},
			socket: "/run/crio/crio.sock", wantErr: ErrNoNRIValidation, wantInMsg: []string{"cri-o", "not containerd", "--pull-only"}},
		{name: "runtime not answering", files: plain, fixture: "default-2.4.2", rt: containerd242, socket: "-",
			wantInMsg: []string{"which it is", "containerd.sock"}},
		{name: "k3s", files: map[string]string{"/etc/rancher/k3s/config.yaml": "write-kubeconfig-mode: \"0644\"\n"}, rt: containerd242,
			wantErr: ErrUnsupportedLayout, wantInMsg: []string{"/run/k3s/containerd/containerd.sock", "image service endpoint"}},
		{name: "rke2", files: map[string]string{"/etc/rancher/rke2/config.yaml": "token: x\n", "/var/lib/kubelet/config.yaml": plainConfig}, rt: containerd242,
			wantErr: ErrUnsupportedLayout, wantInMsg: []string{"rke2"}},
		{name: "no kubelet", files: map[string]string{"/etc/hostname": "n1\n"}, rt: containerd242,
			wantErr: ErrUnsupportedLayout, wantInMsg: []string{"--kubelet-config"}},
		{name: "another image service in front of containerd", files: map[string]string{"/var/lib/kubelet/config.yaml": splitConfig}, fixture: "default-2.4.2", rt: containerd242,
			wantErr: ErrUnsupportedLayout, wantInMsg: []string{"unix:///run/other/image.sock", "something else already serves kubelet's image calls"}},
		{name: "kubelet wired by an earlier pullguard", files: map[string]string{"/var/lib/kubelet/config.yaml": oldLayoutConfig}, fixture: "default-2.4.2", rt: containerd242,
			wantInMsg: []string{"runtime endpoint is pullguard's socket", "pullguard-agent uninstall"}},
		{name: "kubelet already uses pullguard, but no install state", files: map[string]string{"/var/lib/kubelet/config.yaml": strings.Replace(plainConfig,
			"imageServiceEndpoint: unix:///run/containerd/containerd.sock", "imageServiceEndpoint: "+pgEndpoint, 1)}, fixture: "default-2.4.2", rt: containerd242,
			wantInMsg: []string{"already pullguard's socket", "no backup"}},
		{name: "not a KubeletConfiguration", files: map[string]string{"/var/lib/kubelet/config.yaml": "kind: Pod\n"}, rt: containerd242,
			wantInMsg: []string{"not a KubeletConfiguration"}},
		{name: "NRI in disabled_plugins", files: plain, fixture: "default-2.4.2", rt: containerd242,
			wantInMsg: []string{"disabled_plugins"}},
		{name: "external NRI plugins refused by containerd", files: plain, fixture: "nri-section", rt: containerd242,
			wantInMsg: []string{"disable_connections = true"}},
		{name: "[nri] timeout not under containerd's", files: plain, fixture: "default-2.4.2", rt: containerd242,
			config: srcConfig + "\n[nri]\ntimeout = \"2s\"\n", wantInMsg: []string{"[nri] timeout 2s", "plugin_request_timeout 2s"}},
		{name: "config rejected", files: plain, fixture: "default-2.4.2", rt: containerd242,
			config: srcConfig + "\n[log]\nbogus = 1\n", wantInMsg: []string{"bogus"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := node(t, tc.files)
			if tc.fixture != "" {
				withContainerd(t, root, tc.fixture)
			}
			switch tc.name {
			case "NRI in disabled_plugins":
				p := root.Path(DefaultContainerdConfig)
				data, _ := os.ReadFile(p)
				must(t, os.WriteFile(p, bytes.Replace(data, []byte("disabled_plugins = []"), []byte("disabled_plugins = ['io.containerd.nri.v1.nri']"), 1), 0o644))
			case "external NRI plugins refused by containerd":
				p := root.Path(DefaultContainerdConfig)
				data, _ := os.ReadFile(p)
				must(t, os.WriteFile(p, bytes.Replace(data, []byte("plugin_request_timeout = '3s'"), []byte("plugin_request_timeout = '3s'\n    disable_connections = true"), 1), 0o644))
			}
			sock := tc.socket
			switch sock {
			case "":
				sock = "/run/containerd/containerd.sock"
			case "-":
				sock = ""
			}
			f := newFakeNodeAt(t, root, tc.rt, sock)
			opts := source(t, "bin", firstNonEmpty(tc.config, srcConfig))
			opts.Root, opts.Services = root, f
			opts.Validate = func(_ context.Context, b *bundle.Bundle, n hoststate.Node) error { return b.Validate(root, n) }
			before := snapshot(t, root, "/")
			_, err := Install(context.Background(), opts)
			if err == nil {
				t.Fatal("Install succeeded")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			for _, want := range append(tc.wantInMsg, "nothing on the host was changed") {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("err = %v\nwant it to mention %q", err, want)
				}
			}
			if diff := diffSnap(before, snapshot(t, root, "/")); diff != "" {
				t.Errorf("refused install changed the host: %s", diff)
			}
			if c := f.Calls(); len(c) != 0 {
				t.Errorf("refused install called services: %v", c)
			}
		})
	}
}

func TestInstallPullOnly(t *testing.T) {
	ctx := context.Background()
	// containerd 2.1: enforce mode is refused, pull-only is what is left.
	root, f, opts := setup(t, map[string]string{
		"/var/lib/kubelet/kubeadm-flags.env": kubeadmOldFlags,
		"/var/lib/kubelet/config.yaml":       kubeadmConfigNoEndpoint,
	}, "v2", containerd21)
	var logs bytes.Buffer
	opts.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	opts.PullOnly = true
	original := snapshot(t, root, "/")
	originalContainerd := snapshot(t, root, "/etc/containerd")
	res, err := Install(ctx, opts)
	if err != nil {
		t.Fatalf("Install --pull-only: %v", err)
	}
	if res.Mode != config.NRIPullOnly || res.ContainerdChanged || res.DropIn != "" || !res.KubeletRewired {
		t.Errorf("result = %+v", res)
	}
	for _, gap := range []string{"already on the node", "ctr import", "re-tagged", "another", "image volumes", "sandbox"} {
		if !slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.HasPrefix(w, "PULL-ONLY") && strings.Contains(w, gap) }) {
			t.Errorf("result warnings %q do not say %q is unchecked", res.Warnings, gap)
		}
	}
	if !strings.Contains(logs.String(), `"level":"ERROR","msg":"PULL-ONLY INSTALL`) {
		t.Errorf("pull-only not logged at error level:\n%s", logs.String())
	}
	if diff := diffSnap(originalContainerd, snapshot(t, root, "/etc/containerd")); diff != "" {
		t.Errorf("pull-only install touched containerd's config: %s", diff)
	}
	if slices.Contains(f.Calls(), "restart containerd.service") {
		t.Errorf("pull-only install restarted containerd: %v", f.Calls())
	}
	cfg := installedConfig(t, root)
	if cfg.NRI.Mode != config.NRIPullOnly || cfg.Server.Upstream != "unix:///var/run/containerd/containerd.sock" {
		t.Errorf("installed config: mode %q upstream %q", cfg.NRI.Mode, cfg.Server.Upstream)
	}
	if rt, img := kubeletEndpoints(t, root, ""); !sameEndpoint(img, pgEndpoint) || sameEndpoint(rt, pgEndpoint) {
		t.Errorf("kubelet endpoints = runtime %s, image %s", rt, img)
	}
	if err := Uninstall(ctx, Options{Root: root, Services: f}); err != nil {
		t.Fatal(err)
	}
	if diff := diffSnap(original, snapshot(t, root, "/")); diff != "" {
		t.Errorf("uninstall did not restore the node: %s", diff)
	}
}

func TestPullOnlyThenEnforce(t *testing.T) {
	ctx := context.Background()
	root, f, opts := setup(t, map[string]string{"/var/lib/kubelet/config.yaml": plainConfig}, "default-2.4.2", containerd242)
	opts.PullOnly = true
	if _, err := Install(ctx, opts); err != nil {
		t.Fatal(err)
	}
	kubelet := read(t, root, "/var/lib/kubelet/config.yaml")
	n := len(f.Calls())
	opts.PullOnly = false
	res, err := Install(ctx, opts)
	if err != nil {
		t.Fatalf("enforce after pull-only: %v", err)
	}
	if !res.ContainerdChanged || res.KubeletRewired || res.Mode != config.NRIEnforce {
		t.Errorf("result = %+v", res)
	}
	calls := f.Calls()[n:]
	// The mode is read at start: pullguard restarts, after containerd.
	if !before(calls, "restart containerd.service", "restart pullguard.service") || slices.Contains(calls, "restart kubelet.service") {
		t.Errorf("calls = %v", calls)
	}
	if got := read(t, root, "/var/lib/kubelet/config.yaml"); got != kubelet {
		t.Error("kubelet's config changed although it already used pullguard")
	}
	if installedConfig(t, root).NRI.Mode != config.NRIEnforce || !containerdNRI(t, root).Requires("pullguard", "10") {
		t.Error("not switched to enforce")
	}
	// And back to pull-only is refused: containerd would refuse every create.
	before := snapshot(t, root, "/")
	opts.PullOnly = true
	if _, err := Install(ctx, opts); err == nil || !strings.Contains(err.Error(), "run `pullguard-agent uninstall` first") {
		t.Errorf("pull-only over enforce: %v", err)
	}
	if diff := diffSnap(before, snapshot(t, root, "/")); diff != "" {
		t.Errorf("refused switch changed files: %s", diff)
	}
}

func TestInstallFailureRestoresContainerdAndKubelet(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(*fakeNode, *Options)
		wantMsg []string
		// containerdRestarted: containerd's config was changed and it must
		// have been restarted on its original config.
		containerdRestarted bool
	}{
		{"containerd restart fails", func(f *fakeNode, o *Options) {
			f.failOnce["restart containerd.service"] = errors.New("containerd exited")
		}, []string{"restart containerd", "containerd's configuration was restored byte for byte", "kubelet's configuration was not changed", "pullguard stopped"}, true},
		{"pullguard never becomes ready", func(f *fakeNode, o *Options) { f.broken = true; o.ReadyTimeout = time.Second },
			[]string{"not ready", "crash-looping", "containerd's configuration was restored byte for byte", "containerd restarted", "kubelet's configuration was not changed"}, true},
		{"pullguard fails to start", func(f *fakeNode, o *Options) {
			f.fail["start pullguard.service"] = errors.New("unit failed")
			f.fail["restart pullguard.service"] = errors.New("unit failed")
		}, []string{"start pullguard", "containerd's configuration was restored byte for byte"}, true},
		{"kubelet restart fails", func(f *fakeNode, o *Options) {
			f.failOnce["restart kubelet.service"] = errors.New("kubelet exited")
		}, []string{"restart kubelet", "kubelet's configuration was restored byte for byte", "kubelet restarted", "containerd's configuration was restored byte for byte", "pullguard stopped"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{
				"/var/lib/kubelet/kubeadm-flags.env": kubeadmOldFlags,
				"/var/lib/kubelet/config.yaml":       kubeadmConfigWithEndpoint,
			}
			// The v2 fixture has no imports: both containerd's main file
			// and the drop-in change, and both must come back.
			root, f, opts := setup(t, files, "v2", containerd242)
			original := snapshot(t, root, "/var/lib/kubelet", "/etc/containerd")
			tc.setup(f, &opts)
			_, err := Install(context.Background(), opts)
			if err == nil {
				t.Fatal("Install succeeded")
			}
			for _, want := range tc.wantMsg {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("err = %v\nwant it to mention %q", err, want)
				}
			}
			if diff := diffSnap(original, snapshot(t, root, "/var/lib/kubelet", "/etc/containerd")); diff != "" {
				t.Errorf("kubelet's or containerd's files changed: %s", diff)
			}
			if exists(root.Path("/etc/containerd/conf.d")) {
				t.Error("the drop-in directory is left behind")
			}
			if tc.containerdRestarted {
				if n := len(f.containerdRequired); n == 0 || f.containerdRequired[n-1] {
					t.Errorf("containerd restarts requiring pullguard = %v: it must end on its original config", f.containerdRequired)
				}
			}
			for _, ready := range f.kubeletSawReady {
				if !ready {
					t.Errorf("kubelet restarted while pullguard was not ready")
				}
			}
			calls := f.Calls()
			if pullguardStarted(calls) != "" && !slices.Contains(calls, "stop pullguard.service") {
				t.Errorf("pullguard left running after a failed install: %v", calls)
			}
			if slices.Contains(calls, "restart kubelet.service") && !before(calls, "restart kubelet.service", "stop pullguard.service") {
				t.Errorf("calls = %v: kubelet must be back on its config before pullguard stops", calls)
			}
			st, err := hoststate.LoadState(root)
			if err != nil || st == nil || st.KubeletWired || st.ContainerdWired {
				t.Errorf("state after the failed install = %+v, %v", st, err)
			}

			// The node can still be installed once the problem is gone.
			f.broken, f.fail, f.failOnce = false, map[string]error{}, map[string]error{}
			opts.ReadyTimeout = 5 * time.Second
			if _, err := Install(context.Background(), opts); err != nil {
				t.Fatalf("install after fixing: %v", err)
			}
			st, err = hoststate.LoadState(root)
			if err != nil || st == nil || !st.KubeletWired || !st.ContainerdWired {
				t.Fatalf("state = %+v, %v", st, err)
			}
			for _, b := range append(st.Backups, st.ContainerdBackups...) {
				if !b.Absent && read(t, root, b.BackupPath) != original[root.Path(b.HostPath)] {
					t.Errorf("backup of %s is not the original", b.HostPath)
				}
			}
		})
	}
}

func TestUpgradeRestartsPullguardOnly(t *testing.T) {
	root, f, opts := setup(t, map[string]string{"/var/lib/kubelet/config.yaml": plainConfig}, "default-2.4.2", containerd242)
	if _, err := Install(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	backup := read(t, root, hoststate.BackupDir+"/"+backupName("/var/lib/kubelet/config.yaml"))
	dropIn := read(t, root, DefaultNRIDropIn)
	must(t, os.WriteFile(opts.Binary, []byte("v2"), 0o755))
	n := len(f.Calls())
	res, err := Install(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Changed || res.KubeletRewired || res.ContainerdChanged {
		t.Errorf("upgrade result = %+v", res)
	}
	calls := f.Calls()[n:]
	if !slices.Contains(calls, "restart pullguard.service") || slices.Contains(calls, "restart kubelet.service") || slices.Contains(calls, "restart containerd.service") {
		t.Errorf("upgrade calls = %v", calls)
	}
	if got := read(t, root, hoststate.BinaryPath); got != "v2" {
		t.Errorf("binary = %q", got)
	}
	if got := read(t, root, hoststate.BackupDir+"/"+backupName("/var/lib/kubelet/config.yaml")); got != backup || got != plainConfig {
		t.Errorf("upgrade overwrote the original backup")
	}
	if read(t, root, DefaultNRIDropIn) != dropIn {
		t.Error("upgrade rewrote containerd's drop-in")
	}
}

func TestUpgradeToBrokenBinaryRollsBack(t *testing.T) {
	root, f, opts := setup(t, map[string]string{"/var/lib/kubelet/config.yaml": plainConfig}, "default-2.4.2", containerd242)
	if _, err := Install(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	wired := snapshot(t, root, "/var/lib/kubelet", "/etc/containerd")
	cfg := read(t, root, hoststate.ConfigPath)
	must(t, os.WriteFile(opts.Binary, []byte("v2-broken"), 0o755))
	must(t, os.WriteFile(opts.ConfigFile, []byte(srcConfig+"\n[log]\nlevel = \"debug\"\n"), 0o644))
	f.broken = true
	opts.ReadyTimeout = time.Second
	_, err := Install(context.Background(), opts)
	if err == nil || !strings.Contains(err.Error(), "the previous pullguard was put back and restarted") {
		t.Fatalf("upgrade to a binary that never becomes ready: %v", err)
	}
	if got := read(t, root, hoststate.BinaryPath); got != "pullguard-binary-v1" {
		t.Errorf("binary after failed upgrade = %q, want v1 back", got)
	}
	if got := read(t, root, hoststate.ConfigPath); got != cfg {
		t.Errorf("config after failed upgrade:\n%s\nwant the previous one back", got)
	}
	if diff := diffSnap(wired, snapshot(t, root, "/var/lib/kubelet", "/etc/containerd")); diff != "" {
		t.Errorf("a failed upgrade changed kubelet's or containerd's files: %s", diff)
	}
	if calls := f.Calls(); slices.Contains(calls, "stop pullguard.service") {
		t.Errorf("pullguard stopped although kubelet depends on it: %v", calls)
	}
}

func TestUninstallWithoutStateRefusesWhenKubeletUsesPullguard(t *testing.T) {
	cfg := "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nimageServiceEndpoint: " + pgEndpoint + "\n"
	root := node(t, map[string]string{"/var/lib/kubelet/config.yaml": cfg, hoststate.BinaryPath: "bin"})
	f := newFakeNode(t, root, containerd242)
	err := Uninstall(context.Background(), Options{Root: root, Services: f})
	if err == nil || !strings.Contains(err.Error(), "no install state") {
		t.Fatalf("err = %v", err)
	}
	if len(f.Calls()) != 0 || read(t, root, hoststate.BinaryPath) != "bin" {
		t.Errorf("refused uninstall changed something: %v", f.Calls())
	}
}

func TestUninstallRefusesWhileContainerdStillRequiresPullguard(t *testing.T) {
	ctx := context.Background()
	root, f, opts := setup(t, map[string]string{"/var/lib/kubelet/config.yaml": plainConfig}, "default-2.4.2", containerd242)
	if _, err := Install(ctx, opts); err != nil {
		t.Fatal(err)
	}
	// The administrator also requires pullguard in a drop-in of their own:
	// once install's drop-in is gone, containerd would still require it.
	must(t, os.WriteFile(root.Path("/etc/containerd/conf.d/50-site.toml"),
		[]byte("version = 3\n[plugins.'io.containerd.nri.v1.nri'.default_validator]\n  enable = true\n  required_plugins = ['pullguard']\n"), 0o644))
	snap := snapshot(t, root, "/")
	n := len(f.Calls())
	err := Uninstall(ctx, Options{Root: root, Services: f})
	if err == nil || !strings.Contains(err.Error(), "would still require pullguard") || !strings.Contains(err.Error(), "50-site.toml") ||
		!strings.Contains(err.Error(), "nothing was changed") {
		t.Fatalf("err = %v", err)
	}
	if diff := diffSnap(snap, snapshot(t, root, "/")); diff != "" || len(f.Calls()) != n {
		t.Errorf("refused uninstall changed %s, called %v", diff, f.Calls()[n:])
	}
	// Without an install state (and kubelet put back by hand), the same.
	must(t, os.Remove(root.Path(hoststate.StatePath)))
	must(t, os.WriteFile(root.Path("/var/lib/kubelet/config.yaml"), []byte(plainConfig), 0o640))
	if err := Uninstall(ctx, Options{Root: root, Services: f}); err == nil || !strings.Contains(err.Error(), "would still require pullguard") {
		t.Fatalf("without state: err = %v", err)
	}
}

func TestUninstallAfterRolledBackInstallKeepsLaterKubeletEdits(t *testing.T) {
	root, f, opts := setup(t, map[string]string{"/var/lib/kubelet/config.yaml": plainConfig}, "default-2.4.2", containerd242)
	f.failOnce["restart kubelet.service"] = errors.New("kubelet exited")
	if _, err := Install(context.Background(), opts); err == nil {
		t.Fatal("install succeeded despite the kubelet restart failure")
	}
	// The administrator edits kubelet afterwards; uninstall must not roll that back.
	edited := plainConfig + "\nmaxPods: 50\n"
	must(t, os.WriteFile(root.Path("/var/lib/kubelet/config.yaml"), []byte(edited), 0o640))
	if err := Uninstall(context.Background(), Options{Root: root, Services: f}); err != nil {
		t.Fatal(err)
	}
	if got := read(t, root, "/var/lib/kubelet/config.yaml"); got != edited {
		t.Errorf("uninstall restored a stale backup over a later edit:\n%s", got)
	}
	if _, err := os.Stat(root.Path(hoststate.BinaryPath)); err == nil {
		t.Error("pullguard binary left behind")
	}
}

func TestUnit(t *testing.T) {
	for _, want := range []string{"After=network-online.target containerd.service", "Wants=network-online.target containerd.service",
		"Before=kubelet.service", "Restart=always", "StartLimitIntervalSec=0", "WantedBy=multi-user.target",
		"ExecStart=/usr/local/bin/pullguard serve --config /etc/pullguard/config.toml"} {
		if !strings.Contains(unitFile, want+"\n") {
			t.Errorf("unit lacks %q", want)
		}
	}
	for _, line := range strings.Split(unitFile, "\n") {
		// pullguard must not depend on kubelet, and a containerd restart
		// must not restart or stop it (it registers again by itself).
		for _, dep := range []string{"Requires=", "BindsTo=", "PartOf=", "Requisite=", "After=", "Wants="} {
			if strings.HasPrefix(line, dep) && strings.Contains(line, "kubelet") {
				t.Errorf("unit line %q ties pullguard to kubelet", line)
			}
		}
		for _, dep := range []string{"Requires=", "BindsTo=", "PartOf=", "Requisite="} {
			if strings.HasPrefix(line, dep) {
				t.Errorf("unit line %q would stop or restart pullguard with another unit", line)
			}
		}
	}
}

func TestUninstallOfAnEarlierPullguardThatTookTheRuntimeEndpoint(t *testing.T) {
	// What an earlier install left: kubelet's both endpoints at pullguard,
	// a state without any of containerd's side, the original backed up.
	root, f, opts := setup(t, map[string]string{"/var/lib/kubelet/config.yaml": oldLayoutConfig, hoststate.BinaryPath: "old"}, "default-2.4.2", containerd242)
	backup := hoststate.BackupDir + "/" + backupName("/var/lib/kubelet/config.yaml")
	must(t, os.MkdirAll(root.Path(hoststate.BackupDir), 0o700))
	must(t, os.WriteFile(root.Path(backup), []byte(plainConfig), 0o600))
	old := `{"version": 1, "layout": "kubelet-config", "upstream": "unix:///run/containerd/containerd.sock", "socket": "/run/pullguard/pullguard.sock",
  "kubeletWired": true, "backups": [{"hostPath": "/var/lib/kubelet/config.yaml", "backupPath": "` + backup + `", "mode": 416}]}`
	must(t, os.WriteFile(root.Path(hoststate.StatePath), []byte(old), 0o600))
	must(t, os.MkdirAll(filepath.Dir(root.Path(hoststate.UnitPath)), 0o755))
	must(t, os.WriteFile(root.Path(hoststate.UnitPath), []byte(unitFile), 0o644))

	// install refuses, changing nothing.
	snap := snapshot(t, root, "/")
	if _, err := Install(context.Background(), opts); err == nil || !strings.Contains(err.Error(), "pullguard-agent uninstall") {
		t.Fatalf("install over the earlier layout: %v", err)
	}
	if diff := diffSnap(snap, snapshot(t, root, "/")); diff != "" {
		t.Errorf("refused install changed %s", diff)
	}
	// uninstall puts kubelet back, then install works.
	if err := Uninstall(context.Background(), Options{Root: root, Services: f}); err != nil {
		t.Fatal(err)
	}
	if got := read(t, root, "/var/lib/kubelet/config.yaml"); got != plainConfig {
		t.Errorf("kubelet's config after uninstall:\n%s", got)
	}
	if _, err := Install(context.Background(), opts); err != nil {
		t.Fatalf("install after uninstall: %v", err)
	}
}
