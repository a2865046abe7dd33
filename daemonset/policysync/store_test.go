package policysync

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullguard/pullguard/daemonset/hoststate"
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

func TestStoreWriteLoad(t *testing.T) {
	s := Store{Dir: filepath.Join(t.TempDir(), "crd-policies")}
	a := Key{Kind: policy.KindCluster, Name: "a"}
	b := Key{Kind: policy.KindNamespace, Namespace: "ns", Name: "b"}
	c := Key{Kind: policy.KindNamespace, Namespace: "ns", Name: "c"}
	files := map[Key][]byte{a: rendered(t, a, "*"), b: rendered(t, b, "registry.example.com/*"), c: rendered(t, c, "other.example.com/*")}

	changed, err := s.Write(files)
	if err != nil || !changed {
		t.Fatalf("first Write = %v, %v", changed, err)
	}
	if changed, err := s.Write(files); err != nil || changed {
		t.Fatalf("same content again: changed=%v err=%v", changed, err)
	}
	// The host daemon's view.
	ps, err := policy.LoadDir(s.Dir)
	if err != nil || len(ps) != 3 {
		t.Fatalf("LoadDir = %d policies, %v", len(ps), err)
	}
	set, err := policy.NewSet(ps, "")
	if err != nil {
		t.Fatal(err)
	}
	m, err := set.Match("ns", "registry.example.com/app:1")
	if err != nil || m.Rule == nil || m.Policy.Name != "b" || !strings.Contains(m.Policy.Source, "ImagePolicy_ns.yaml") {
		t.Fatalf("match = %+v, %v", m, err)
	}

	got, skipped, err := s.Load()
	if err != nil || len(skipped) != 0 || len(got) != 3 || string(got[b]) != string(files[b]) || string(got[a]) != string(files[a]) {
		t.Fatalf("Load = %d files, skipped %v, %v", len(got), skipped, err)
	}

	// Deleting the namespace's last object removes its file; the cluster file is untouched.
	before, _ := os.Stat(filepath.Join(s.Dir, "ClusterImagePolicy.yaml"))
	delete(files, b)
	delete(files, c)
	if changed, err := s.Write(files); err != nil || !changed {
		t.Fatalf("Write after delete = %v, %v", changed, err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir, "ImagePolicy_ns.yaml")); !os.IsNotExist(err) {
		t.Errorf("empty group's file still there: %v", err)
	}
	after, _ := os.Stat(filepath.Join(s.Dir, "ClusterImagePolicy.yaml"))
	if !os.SameFile(before, after) {
		t.Error("an unchanged group was rewritten")
	}
	if got, _, _ := s.Load(); len(got) != 1 {
		t.Errorf("after delete Load = %d files, want 1", len(got))
	}
}

func TestStoreLoadSkipsForeignAndBrokenFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "crd-policies")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	a := Key{Kind: policy.KindCluster, Name: "a"}
	misplaced := Key{Kind: policy.KindNamespace, Namespace: "other", Name: "m"}
	for name, data := range map[string]string{
		a.FileName():          string(rendered(t, a, "*")) + docSeparator + "spec: [\n",
		"ImagePolicy_ns.yaml": string(rendered(t, misplaced, "*")),
		"notes.yaml":          "whatever",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, skipped, err := Store{Dir: dir}.Load()
	if err != nil || len(got) != 1 || got[a] == nil || len(skipped) != 2 {
		t.Fatalf("Load = %v, skipped %v, %v", got, skipped, err)
	}
}

func TestStoreRefusesTooMany(t *testing.T) {
	files := map[Key][]byte{}
	for i := 0; i <= MaxObjects; i++ {
		files[Key{Kind: policy.KindCluster, Name: fmt.Sprintf("p%d", i)}] = []byte("x")
	}
	s := Store{Dir: filepath.Join(t.TempDir(), "d")}
	if _, err := s.Write(files); err == nil {
		t.Fatal("Write accepted more than MaxObjects")
	}
	if _, err := os.Lstat(s.Dir); !os.IsNotExist(err) {
		t.Fatalf("refused write left %s behind: %v", s.Dir, err)
	}
}

func TestSwapDir(t *testing.T) {
	parent := t.TempDir()
	link := filepath.Join(parent, "release")
	if err := os.Mkdir(link, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(link, "mine.pem"), []byte("hand-made"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, content := range []string{"one", "two"} {
		if changed, err := hoststate.SwapDir(link, map[string][]byte{"ca.crt": []byte(content)}); err != nil || !changed {
			t.Fatalf("SwapDir(%s) = %v, %v", content, changed, err)
		}
		if b, err := os.ReadFile(filepath.Join(link, "ca.crt")); err != nil || string(b) != content {
			t.Fatalf("read back %q, %v", b, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(parent, ".release-previous", "mine.pem")); err != nil || string(b) != "hand-made" {
		t.Fatalf("hand-made directory lost: %q %v", b, err)
	}
	entries, _ := os.ReadDir(parent)
	if len(entries) != 3 { // link, current target, previous
		t.Errorf("left behind: %v", entries)
	}
}

// BenchmarkWriteAndLoad1000: the node-side cost of one change with 1,000 objects in 10
// namespaces: write the changed group, then load the directory and build the policy set as the
// daemon does.
func BenchmarkWriteAndLoad1000(b *testing.B) {
	files := map[Key][]byte{}
	for i := range 1000 {
		k := Key{Kind: policy.KindNamespace, Namespace: fmt.Sprintf("ns%d", i%10), Name: fmt.Sprintf("p%d", i)}
		files[k] = rendered(b, k, fmt.Sprintf("registry.example.com/team%d/*", i))
	}
	s := Store{Dir: filepath.Join(b.TempDir(), "crd-policies")}
	extra := Key{Kind: policy.KindCluster, Name: "extra"}
	b.ResetTimer()
	for i := range b.N {
		files[extra] = rendered(b, extra, fmt.Sprintf("x%d.example.com/*", i))
		if _, err := s.Write(files); err != nil {
			b.Fatal(err)
		}
		ps, err := policy.LoadDir(s.Dir)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := policy.NewSet(ps, ""); err != nil {
			b.Fatal(err)
		}
	}
}
