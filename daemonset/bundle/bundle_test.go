package bundle

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullguard/pullguard/daemonset/hoststate"
)

const goodConfig = `[server]
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
      va:
        enabled: true
`

// configMapDir lays files out the way kubelet projects a ConfigMap: a
// timestamped dir, ..data pointing at it, and each key a symlink through
// ..data. Calling it again swaps ..data atomically, as kubelet does.
func configMapDir(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	ts, err := os.MkdirTemp(dir, "..2026_")
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(ts, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
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

func TestReadConfigMapLayout(t *testing.T) {
	cfgDir, polDir := t.TempDir(), t.TempDir()
	configMapDir(t, cfgDir, map[string]string{"config.toml": goodConfig})
	configMapDir(t, polDir, map[string]string{"cluster.yaml": clusterPolicy, "notes.txt": "ignored"})
	b, err := Read(Source{ConfigFile: filepath.Join(cfgDir, "config.toml"), PoliciesDir: polDir})
	if err != nil {
		t.Fatal(err)
	}
	if string(b.Config) != goodConfig || len(b.Policies) != 1 || string(b.Policies["cluster.yaml"]) != clusterPolicy {
		t.Fatalf("bundle = %q %v", b.Config, b.PolicyNames())
	}
	h := b.Hash()
	configMapDir(t, cfgDir, map[string]string{"config.toml": goodConfig + "\n# changed\n"})
	b2, err := Read(Source{ConfigFile: filepath.Join(cfgDir, "config.toml"), PoliciesDir: polDir})
	if err != nil {
		t.Fatal(err)
	}
	if b2.Hash() == h {
		t.Error("hash did not change with the content")
	}
}

func TestReadBounds(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(big, make([]byte, MaxFileBytes+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(Source{ConfigFile: big}); err == nil {
		t.Error("oversized config read")
	}
}

// k3sNode is a node whose runtime and NRI socket are not the defaults.
var k3sNode = hoststate.Node{
	Upstream: "unix:///run/k3s/containerd/containerd.sock",
	NRIMode:  "enforce",
	NRI:      &hoststate.NodeNRI{Socket: "/run/k3s/nri/nri.sock", ContainerdConfig: "/var/lib/rancher/k3s/agent/etc/containerd/config.toml", SandboxImage: "registry.k8s.io/pause:3.9"},
}

func TestWriteToHostSwapsPoliciesAndSetsUpstream(t *testing.T) {
	root := hoststate.Root(t.TempDir())
	b := &Bundle{Config: []byte(goodConfig), Policies: map[string][]byte{"a.yaml": []byte(clusterPolicy)}}
	changed, err := b.WriteToHost(root, k3sNode)
	if err != nil || !changed {
		t.Fatalf("first write: %v, %v", changed, err)
	}
	cfg, _ := os.ReadFile(root.Path(hoststate.ConfigPath))
	for _, want := range []string{`upstream = "unix:///run/k3s/containerd/containerd.sock"`, `socket = "/run/k3s/nri/nri.sock"`,
		`containerd_config = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml"`, `sandbox_image = "registry.k8s.io/pause:3.9"`, `mode = "enforce"`} {
		if !strings.Contains(string(cfg), want) {
			t.Errorf("node setting %s not written:\n%s", want, cfg)
		}
	}
	if got, _ := os.ReadFile(root.Path(hoststate.PoliciesPath + "/a.yaml")); string(got) != clusterPolicy {
		t.Errorf("policy = %q", got)
	}
	if changed, err := b.WriteToHost(root, k3sNode); err != nil || changed {
		t.Errorf("same bundle again: changed=%v err=%v", changed, err)
	}
	b.Policies = map[string][]byte{"b.yaml": []byte(clusterPolicy)}
	if changed, err := b.WriteToHost(root, hoststate.Node{}); err != nil || !changed {
		t.Fatalf("new policies: %v, %v", changed, err)
	}
	entries, _ := os.ReadDir(root.Path(hoststate.PoliciesPath))
	if len(entries) != 1 || entries[0].Name() != "b.yaml" {
		t.Errorf("policies dir = %v, want only b.yaml", entries)
	}
	all, _ := os.ReadDir(root.Path(hoststate.ConfigDir))
	if len(all) != 3 { // config.toml, policies link, one snapshot dir
		var names []string
		for _, e := range all {
			names = append(names, e.Name())
		}
		t.Errorf("old policy snapshots not cleaned up: %v", names)
	}
}

func TestWriteToHostReplacesARealPoliciesDir(t *testing.T) {
	root := hoststate.Root(t.TempDir())
	if err := os.MkdirAll(root.Path(hoststate.PoliciesPath), 0o755); err != nil {
		t.Fatal(err)
	}
	b := &Bundle{Config: []byte(goodConfig), Policies: map[string][]byte{"a.yaml": []byte(clusterPolicy)}}
	if _, err := b.WriteToHost(root, hoststate.Node{}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(root.Path(hoststate.PoliciesPath)); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("policies is not the swapped link: %v %v", fi, err)
	}
}

func TestValidate(t *testing.T) {
	upNode := hoststate.Node{Upstream: "unix:///run/containerd/containerd.sock"}
	tests := []struct {
		name     string
		config   string
		policies map[string]string
		wantErr  string
		node     hoststate.Node
	}{
		{"good", goodConfig, map[string]string{"c.yaml": clusterPolicy}, "", upNode},
		{"node settings checked", goodConfig, nil, "[nri] socket", hoststate.Node{NRIMode: "enforce", NRI: &hoststate.NodeNRI{Socket: "nri.sock"}}},
		{"unknown key", goodConfig + "[log]\nbogus = 1\n", nil, "bogus", upNode},
		{"bad toml", "[server\n", nil, "config.toml", upNode},
		{"bad policy", goodConfig, map[string]string{"c.yaml": "kind: ClusterImagePolicy\nspec: [\n"}, "c.yaml", upNode},
		{"unknown signer", goodConfig, map[string]string{"c.yaml": strings.Replace(clusterPolicy, "      va:\n        enabled: true\n",
			"      trust:\n        enabled: true\n        signerSecrets:\n        - name: nobody\n", 1)}, "nobody", upNode},
		{"policy dir elsewhere", strings.Replace(goodConfig, `dir = "/etc/pullguard/policies"`, `dir = "/srv/p"`, 1),
			map[string]string{"c.yaml": clusterPolicy}, "installs its policies in", upNode},
		{"policy dir off", strings.Replace(goodConfig, `dir = "/etc/pullguard/policies"`, `dir = ""`, 1),
			map[string]string{"c.yaml": clusterPolicy}, "would be ignored", upNode},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := &Bundle{Config: []byte(tc.config), Policies: map[string][]byte{}}
			for n, c := range tc.policies {
				b.Policies[n] = []byte(c)
			}
			root := hoststate.Root(t.TempDir())
			err := b.Validate(root, tc.node)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Validate = %v, want error mentioning %q", err, tc.wantErr)
			}
			if entries, _ := os.ReadDir(string(root)); len(entries) != 0 {
				t.Errorf("Validate wrote under the host root: %v", entries)
			}
		})
	}
}
