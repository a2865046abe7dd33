package node

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/pullguard/pullguard/integration/testbed"
)

// The edits the bed makes to containerd's default config land in the right tables: the
// installer's testdata holds `containerd config default` of the pinned containerd 2.4.2.
func TestSetTOMLKeyOnContainerdDefault(t *testing.T) {
	repo, err := testbed.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(repo, "daemonset/installer/testdata/containerd/default-2.4.2/etc/containerd/config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	edits := []struct{ section, key, value string }{
		{"plugins.'io.containerd.cri.v1.images'.pinned_images", "sandbox", "'127.0.0.1:5000/testbed/pause:1'"},
		{"plugins.'io.containerd.cri.v1.images'.registry", "config_path", "'/etc/containerd/certs.d'"},
		{"plugins.'io.containerd.cri.v1.runtime'", "restrict_oom_score_adj", "true"},
	}
	out := doc
	for _, e := range edits {
		if out, err = setTOMLKey(out, e.section, e.key, e.value); err != nil {
			t.Fatal(err)
		}
	}
	// Exactly three lines differ, each the edited key of its own table.
	before, after := strings.Split(doc, "\n"), strings.Split(out, "\n")
	if len(before) != len(after) {
		t.Fatalf("line count %d -> %d", len(before), len(after))
	}
	var changed []string
	for i := range before {
		if before[i] != after[i] {
			changed = append(changed, strings.TrimSpace(after[i]))
		}
	}
	want := []string{"sandbox = '127.0.0.1:5000/testbed/pause:1'", "config_path = '/etc/containerd/certs.d'", "restrict_oom_score_adj = true"}
	if !slices.Equal(changed, want) {
		t.Errorf("changed lines %q, want %q", changed, want)
	}
	// The other config_path of the file (another table) is left alone.
	if strings.Count(out, "config_path = '/etc/containerd/certs.d'") != 1 {
		t.Error("config_path set outside the images registry table")
	}
	if _, err := setTOMLKey(doc, "plugins.'io.containerd.cri.v1.runtime'", "no_such_key", "1"); err == nil {
		t.Error("a missing key was not reported")
	}
}

// The shipped DaemonSet, with policy-sync, adapted to the host-network node: no listener left
// on a fixed port of the machine, probes and ports follow, policy-sync reaches the API server.
func TestForHostNetworkNode(t *testing.T) {
	repo, err := testbed.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	m, err := CopyManifests(repo, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.AddComponent("policy-sync"); err != nil {
		t.Fatal(err)
	}
	objs, err := m.Build()
	if err != nil {
		t.Fatal(err)
	}
	ports := []int{40001, 40002, 40003}
	if err := ForHostNetworkNode(objs, "127.0.0.1", 6443, ports); err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	for _, o := range objs {
		if o.GetKind() == "DaemonSet" {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &ds); err != nil {
				t.Fatal(err)
			}
		}
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("not on the host network")
	}
	listeners := 0
	for _, c := range append(spec.InitContainers, spec.Containers...) {
		for i, a := range c.Args {
			flag, value, inline := strings.Cut(a, "=")
			if flag != "--metrics-address" && flag != "--health-address" {
				continue
			}
			if !inline {
				value = c.Args[i+1]
			}
			listeners++
			if !strings.HasPrefix(value, "127.0.0.1:4000") {
				t.Errorf("container %s: %s %s, want a given loopback port", c.Name, flag, value)
			}
		}
		for _, p := range c.Ports {
			if p.ContainerPort < 40001 || p.HostPort != p.ContainerPort {
				t.Errorf("container %s: port %+v not moved", c.Name, p)
			}
		}
		if p := c.ReadinessProbe; p != nil && p.HTTPGet != nil && (p.HTTPGet.Host != "127.0.0.1" || p.HTTPGet.Port.IntVal < 40001) {
			t.Errorf("container %s: readiness probe %+v not moved", c.Name, p.HTTPGet)
		}
		if c.Name == "policy-sync" {
			env := map[string]string{}
			for _, e := range c.Env {
				env[e.Name] = e.Value
			}
			if env["KUBERNETES_SERVICE_HOST"] != "127.0.0.1" || env["KUBERNETES_SERVICE_PORT"] != strconv.Itoa(6443) {
				t.Errorf("policy-sync env %v", env)
			}
		}
	}
	if listeners < 2 {
		t.Errorf("%d listeners found in the DaemonSet, want the sync container's and policy-sync's", listeners)
	}
}

func TestNodeOwner(t *testing.T) {
	for name, want := range map[string]int{"pgnode-123-456": 123, "pgnode-x-1": 0, "pgtb-123": 0, "pgnode-77": 0} {
		pid, ok := nodeOwner(name)
		if ok != (want != 0) || pid != want {
			t.Errorf("nodeOwner(%q) = %d, %v; want %d", name, pid, ok, want)
		}
	}
}
