package policysync

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullguard/pullguard/plugin/policy"
)

func rendered(t testing.TB, k Key, pattern string) []byte {
	t.Helper()
	r, err := Render(Object{Key: k, Spec: map[string]any{"repositories": []any{map[string]any{"name": pattern}}}}, "d", nil)
	if err != nil {
		t.Fatal(err)
	}
	return r.Data
}

func TestSnapshotsWriteLoad(t *testing.T) {
	parent := t.TempDir()
	s := Snapshots{Dir: filepath.Join(parent, "crd-policies")}
	a := Key{Kind: policy.KindCluster, Name: "a"}
	b := Key{Kind: policy.KindNamespace, Namespace: "ns", Name: "b"}
	files := map[Key][]byte{a: rendered(t, a, "*"), b: rendered(t, b, "registry.example.com/*")}

	changed, err := s.Write(files)
	if err != nil || !changed {
		t.Fatalf("first Write = %v, %v", changed, err)
	}
	if fi, err := os.Lstat(s.Dir); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("%s is not a symlink: %v", s.Dir, err)
	}
	if changed, err := s.Write(files); err != nil || changed {
		t.Fatalf("same content again: changed=%v err=%v", changed, err)
	}
	// The host daemon's view.
	ps, err := policy.LoadDir(s.Dir)
	if err != nil || len(ps) != 2 {
		t.Fatalf("LoadDir = %d policies, %v", len(ps), err)
	}
	set, err := policy.NewSet(ps, "")
	if err != nil {
		t.Fatal(err)
	}
	m, err := set.Match("ns", "registry.example.com/app:1")
	if err != nil || m.Rule == nil || m.Policy.Name != "b" || !strings.HasSuffix(m.Policy.Source, "ImagePolicy_ns_b.yaml") {
		t.Fatalf("match = %+v, %v", m, err)
	}

	got, skipped, err := s.Load()
	if err != nil || len(skipped) != 0 || len(got) != 2 || string(got[a]) != string(files[a]) {
		t.Fatalf("Load = %d files, skipped %v, %v", len(got), skipped, err)
	}

	delete(files, b)
	if changed, err := s.Write(files); err != nil || !changed {
		t.Fatalf("Write after delete = %v, %v", changed, err)
	}
	entries, _ := os.ReadDir(parent)
	var snaps []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".crd-policies-") {
			snaps = append(snaps, e.Name())
		}
	}
	if len(snaps) != 1 {
		t.Errorf("old snapshots not removed: %v", snaps)
	}
	if got, _, _ := s.Load(); len(got) != 1 {
		t.Errorf("after delete Load = %d files, want 1", len(got))
	}
}

func TestSnapshotsMovesARealDirectoryAside(t *testing.T) {
	parent := t.TempDir()
	s := Snapshots{Dir: filepath.Join(parent, "crd-policies")}
	if err := os.Mkdir(s.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "mine.txt"), []byte("hand-made"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := Key{Kind: policy.KindCluster, Name: "a"}
	if _, err := s.Write(map[Key][]byte{a: rendered(t, a, "*")}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(parent, ".crd-policies-previous", "mine.txt")); err != nil || string(b) != "hand-made" {
		t.Fatalf("hand-made file lost: %q %v", b, err)
	}
}

func TestSnapshotsLoadSkipsForeignAndBrokenFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "crd-policies")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	a := Key{Kind: policy.KindCluster, Name: "a"}
	for name, data := range map[string]string{
		a.FileName():                  string(rendered(t, a, "*")),
		"ClusterImagePolicy_bad.yaml": "spec: [",
		"notes.yaml":                  "whatever",
		"ImagePolicy_ns_x.yaml.swp":   "x",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, skipped, err := Snapshots{Dir: dir}.Load()
	if err != nil || len(got) != 1 || got[a] == nil || len(skipped) != 1 {
		t.Fatalf("Load = %v, skipped %v, %v", got, skipped, err)
	}
}

func TestSnapshotsRefuseTooMany(t *testing.T) {
	files := map[Key][]byte{}
	for i := 0; i <= MaxObjects; i++ {
		files[Key{Kind: policy.KindCluster, Name: fmt.Sprintf("p%d", i)}] = []byte("x")
	}
	s := Snapshots{Dir: filepath.Join(t.TempDir(), "d")}
	if _, err := s.Write(files); err == nil {
		t.Fatal("Write accepted more than MaxObjects")
	}
	if _, err := os.Lstat(s.Dir); !os.IsNotExist(err) {
		t.Fatalf("refused write left %s behind: %v", s.Dir, err)
	}
}
