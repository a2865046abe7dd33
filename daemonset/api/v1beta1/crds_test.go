package v1beta1_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	apiv1beta1 "github.com/pullguard/pullguard/daemonset/api/v1beta1"
	"github.com/pullguard/pullguard/plugin/policy"
)

// The CRDs in daemonset/crds are exactly what controller-gen makes of the Go types: a change to
// the types without `make generate`, or a hand edit of a CRD, fails here.
func TestCRDsAreGenerated(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	bin := os.Getenv("PULLGUARD_TOOLS_BIN")
	if bin == "" {
		bin = filepath.Join(root, ".tools", "bin")
	}
	if _, err := os.Stat(filepath.Join(bin, "controller-gen")); err != nil {
		msg := fmt.Sprintf("controller-gen not found in %s (`make tools` or `make generate` builds it): %v", bin, err)
		if testing.Short() {
			t.Skip(msg)
		}
		t.Fatal(msg)
	}
	out := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(root, "hack", "generate-crds.sh"), out)
	cmd.Env = append(os.Environ(), "PULLGUARD_TOOLS_BIN="+bin)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("controller-gen: %v\n%s", err, b)
	}

	generated, err := filepath.Glob(filepath.Join(out, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	committed, err := filepath.Glob(filepath.Join(root, "daemonset", "crds", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	names := func(paths []string) []string {
		var out []string
		for _, p := range paths {
			out = append(out, filepath.Base(p))
		}
		slices.Sort(out)
		return out
	}
	// The agent watches these resources; controller-gen names each file after its plural.
	want := []string{
		apiv1beta1.GroupVersion.Group + "_" + apiv1beta1.ResourceClusterImagePolicies + ".yaml",
		apiv1beta1.GroupVersion.Group + "_" + apiv1beta1.ResourceImagePolicies + ".yaml",
	}
	if got := names(generated); !slices.Equal(got, want) {
		t.Fatalf("controller-gen generated %v, want %v", got, want)
	}
	if got := names(committed); !slices.Equal(got, want) {
		t.Errorf("daemonset/crds holds %v, want %v", got, want)
	}
	// The agent renders objects under the kinds of the policy model.
	kinds := map[string]policy.Kind{want[0]: policy.KindCluster, want[1]: policy.KindNamespace}
	for _, name := range want {
		gen, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		if k := "\n    kind: " + string(kinds[name]) + "\n"; !strings.Contains(string(gen), k) {
			t.Errorf("%s: names no %q", name, strings.TrimSpace(k))
		}
		cur, err := os.ReadFile(filepath.Join(root, "daemonset", "crds", name))
		if err != nil {
			t.Errorf("%v (run `make generate`)", err)
			continue
		}
		if !bytes.Equal(gen, cur) {
			t.Errorf("daemonset/crds/%s is not what controller-gen generates from the Go types: run `make generate`\n%s", name, firstDifference(string(cur), string(gen)))
		}
	}
}

// firstDifference shows the first differing line of two texts, with its line number.
func firstDifference(committed, generated string) string {
	a, b := strings.Split(committed, "\n"), strings.Split(generated, "\n")
	for i := 0; i < len(a) || i < len(b); i++ {
		var x, y string
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			return fmt.Sprintf("line %d:\n  committed: %q\n  generated: %q", i+1, x, y)
		}
	}
	return "(no line differs)"
}
