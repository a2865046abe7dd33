package config

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/pullguard/pullguard/plugin/policy"
)

// TestExampleConfig validates examples/config.toml exactly as shipped. Its trust stores and
// policy directory are absolute node paths that do not exist on a test machine, so the test
// builds them under a scratch root (generated certificates, a copy of examples/policies) and
// validates the config rebased onto that root with WithRoot: every other check runs as is.
func TestExampleConfig(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("examples", "config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(data, "examples/config.toml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err == nil {
		t.Log("example validated without a scratch root (its paths exist on this machine)")
	}
	root := t.TempDir()
	for _, s := range c.Signers {
		writeCertDir(t, filepath.Join(root, s.TrustStore))
	}
	copyDir(t, filepath.Join("examples", "policies"), filepath.Join(root, c.Policy.Dir))
	rooted := c.WithRoot(root)
	if err := rooted.Validate(); err != nil {
		t.Fatalf("example config does not validate: %v", err)
	}

	// The shipped policies behave as the seed describes.
	ps, err := rooted.Policies()
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.NewSet(ps, policy.Mode(rooted.Policy.DefaultMode))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ns, image, rule string
		trust, va       bool
	}{
		{"default", "nginx:1.25", "*", true, true},
		{"", "quay.io/x", "*", true, true},
		{"kube-system", "registry.k8s.io/pause:3.10", "*", false, false},
		{"pullguard-system", "registry.example.com/pullguard/pullguard:v1", "*", false, false},
		{"team-a", "registry.example.com/team-a/app:1", "registry.example.com/team-a/*", true, true},
		{"team-a", "registry.example.com/team-a/tools/debug:1.0", "registry.example.com/team-a/tools/debug:1.0", false, false},
	} {
		m, err := set.Match(tc.ns, tc.image)
		if err != nil || m.Rule == nil {
			t.Fatalf("%s %s: %v %+v", tc.ns, tc.image, err, m)
		}
		if m.Rule.Name != tc.rule || m.Rule.Checks.Trust.Enabled != tc.trust || m.Rule.Checks.VA.Enabled != tc.va {
			t.Fatalf("%s %s: rule %q checks %+v", tc.ns, tc.image, m.Rule.Name, m.Rule.Checks)
		}
	}
	if m, _ := set.Match("team-a", "nginx"); m.Rule != nil {
		t.Fatalf("team-a's ImagePolicy should replace the cluster policy, matched %q", m.Rule.Name)
	}
}

// TestExampleDocumentsEveryKey keeps examples/config.toml complete: every key of the schema
// (as Default() encodes it) appears in the example.
func TestExampleDocumentsEveryKey(t *testing.T) {
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(Default()); err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	mdSchema, err := toml.Decode(buf.String(), &schema)
	if err != nil {
		t.Fatal(err)
	}
	var example map[string]any
	mdExample, err := toml.DecodeFile(filepath.Join("examples", "config.toml"), &example)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, k := range mdExample.Keys() {
		have[k.String()] = true
	}
	for _, k := range mdSchema.Keys() {
		if !have[k.String()] {
			t.Errorf("examples/config.toml does not show key %q", k)
		}
	}
	// Keys Default() leaves empty (slices, arrays of tables) are not encoded; list them.
	for _, k := range []string{
		"va.scanner_signers", "va.allow.id", "va.allow.expires", "va.allow.namespaces",
		"registry.plain_http", "registry.insecure_skip_verify", "registry.ca_files",
		"signers.name", "signers.trust_store", "signers.identities", "signers.timestamp_store", "signers.revocation",
	} {
		if !have[k] {
			t.Errorf("examples/config.toml does not show key %q", k)
		}
	}
	// Every key of the [[policies]] schema, from the API type itself.
	for _, k := range tomlKeys(reflect.TypeFor[policy.TOMLPolicy](), "policies") {
		if !have[k] {
			t.Errorf("examples/config.toml does not show key %q", k)
		}
	}
}

// tomlKeys lists the dotted TOML keys of a struct type, its embedded structs flattened as the
// decoder does, leaving out fields tagged "-".
func tomlKeys(typ reflect.Type, prefix string) []string {
	var out []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		name := f.Tag.Get("toml")
		if name == "-" {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if f.Anonymous {
			out = append(out, tomlKeys(ft, prefix)...)
			continue
		}
		if ft.Kind() == reflect.Struct {
			out = append(out, tomlKeys(ft, prefix+"."+name)...)
			continue
		}
		out = append(out, prefix+"."+name)
	}
	return out
}

// The seed's documents, verbatim, load: the ibm-system one with its empty "policies:" too.
func TestExampleSeedDocuments(t *testing.T) {
	ps, err := policy.LoadDir(filepath.Join("examples", "seed"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 3 {
		t.Fatalf("got %d policies from the seed documents", len(ps))
	}
	if _, err := policy.NewSet(ps, ""); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join("examples", "seed", "ibm-system.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), "      policies:\n") {
		t.Fatal("the seed's ibm-system document lost its verbatim \"policies:\" entry")
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	must(t, os.MkdirAll(to, 0o755))
	entries, err := os.ReadDir(from)
	must(t, err)
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		must(t, err)
		must(t, os.WriteFile(filepath.Join(to, e.Name()), b, 0o644))
	}
}
