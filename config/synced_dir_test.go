package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// [policy] synced_dir adds the policy-sync agent's files after dir; a missing one is empty.
func TestSyncedDirMergesAfterDir(t *testing.T) {
	base := t.TempDir()
	doc := func(name string) string {
		return "apiVersion: pullguard.dev/v1beta1\nkind: ImagePolicy\nmetadata: {name: " + name + ", namespace: team-a}\nspec: {repositories: [{name: \"*\"}]}\n"
	}
	for path, data := range map[string]string{
		"policies/a.yaml":                      doc("from-configmap"),
		"crd-policies/ImagePolicy_team-a.yaml": doc("from-crd"),
	} {
		p := filepath.Join(base, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		synced string
		want   []string
	}{
		{"crd-policies", []string{"from-configmap", "from-crd"}},
		{"missing", []string{"from-configmap"}},
		{"", []string{"from-configmap"}},
	} {
		c, err := Parse([]byte("[policy]\ndir = \"policies\"\nsynced_dir = \""+tc.synced+"\"\n"), filepath.Join(base, "config.toml"))
		if err != nil {
			t.Fatal(err)
		}
		c.resolve(base)
		ps, err := c.Policies()
		if err != nil {
			t.Fatalf("synced_dir %q: %v", tc.synced, err)
		}
		var got []string
		for _, p := range ps {
			got = append(got, p.Name)
		}
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("synced_dir %q: policies %v, want %v", tc.synced, got, tc.want)
		}
	}
}
