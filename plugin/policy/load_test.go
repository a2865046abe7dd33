package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The seed's three default documents load as they are printed in the seed, including the
// ibm-system entry with the "policies:" typo, and behave as the seed describes.
func TestParseYAMLSeedDefaults(t *testing.T) {
	var all []Policy
	for _, f := range []string{"seed-cluster-default.yaml", "seed-kube-system.yaml", "seed-ibm-system.yaml"} {
		ps, err := ParseYAML(readTestdata(t, f), f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if len(ps) != 1 || ps[0].Source != f {
			t.Fatalf("%s: got %d policies, source %q", f, len(ps), ps[0].Source)
		}
		all = append(all, ps...)
	}
	c := all[0]
	if c.Kind != KindCluster || c.Name != "ibmcloud-default-cluster-image-policy" || len(c.Rules) != 1 ||
		!c.Rules[0].Checks.Trust.Enabled || !c.Rules[0].Checks.VA.Enabled {
		t.Fatalf("cluster default: %+v", c)
	}
	ibm := all[2]
	if ibm.Namespace != "ibm-system" || len(ibm.Rules) != 6 || ibm.Rules[5].Name != "quay.io/coreos/hyperkube" || !ibm.Rules[5].Checks.None() {
		t.Fatalf("ibm-system: %+v", ibm)
	}
	s, err := NewSet(all, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ns, image string
		wantRule  string
		wantTrust bool
	}{
		{"default", "nginx", "*", true},
		{"", "quay.io/x", "*", true},
		{"kube-system", "registry.k8s.io/pause:3.10", "*", false},
		{"kube-system", "registry.ng.bluemix.net/armada/x", "registry*.bluemix.net/armada/*", false},
		{"ibm-system", "quay.io/coreos/hyperkube:v1", "quay.io/coreos/hyperkube", false},
	} {
		m, err := s.Match(tc.ns, tc.image)
		if err != nil || m.Rule == nil {
			t.Fatalf("%s %s: %v %+v", tc.ns, tc.image, err, m)
		}
		if m.Rule.Name != tc.wantRule || m.Rule.Checks.Trust.Enabled != tc.wantTrust {
			t.Fatalf("%s %s: rule %q trust %v", tc.ns, tc.image, m.Rule.Name, m.Rule.Checks.Trust.Enabled)
		}
	}
}

func TestParseYAMLForms(t *testing.T) {
	doc := `# leading comment
---
apiVersion: portieris.cloud.ibm.com/v1
kind: ImagePolicy
metadata:
  name: team
  namespace: team-a
  labels: {app: x}
  annotations: {note: y}
spec:
  repositories:
  - name: quay.io/team/*
    policy:
      trust:
        enabled: true
        signerSecrets:
        - name: release
        - name: qa
        signers: [release, ops]
---
---
apiVersion: pullguard.dev/v1beta1
kind: ClusterImagePolicy
metadata:
  name: strict
spec:
  mode: audit
  repositories:
  - name: "*"
    mode: enforce
    failOpen: true
    policy:
      va:
        enabled: true
        maxSeverity: medium
        ignoreUnfixed: true
        unscanned: allow
        maxReportAge: 168h
        requireSignedReport: false
        allow:
        - id: CVE-2024-1234
          expires: 2027-01-31
          namespaces: [team-a]
        - id: CVE-2024-9999
status: {}
...
`
	ps, err := ParseYAML([]byte(doc), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].Source != "p.yaml#doc 1" || ps[1].Source != "p.yaml#doc 3" {
		t.Fatalf("got %d policies: %+v", len(ps), ps)
	}
	tr := ps[0].Rules[0].Checks.Trust
	if ps[0].Namespace != "team-a" || !tr.Enabled || strings.Join(tr.Signers, ",") != "release,qa,ops" {
		t.Fatalf("trust: %+v", ps[0])
	}
	p := ps[1]
	r := p.Rules[0]
	va := r.Checks.VA
	if p.Mode != ModeAudit || r.Mode != ModeEnforce || !r.FailOpen || !va.Enabled || *va.MaxSeverity != "medium" ||
		!*va.IgnoreUnfixed || *va.Unscanned != "allow" || *va.MaxReportAge != 168*time.Hour || *va.RequireSignedReport {
		t.Fatalf("va: %+v", r)
	}
	exp := va.Allow[0].Expires
	if exp.Format(time.DateOnly) != "2027-01-31" || !exp.Add(time.Nanosecond).Equal(time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("expires %v, want the end of 2027-01-31 UTC", exp)
	}
	if va.Allow[0].Namespaces[0] != "team-a" || !va.Allow[1].Expires.IsZero() {
		t.Fatalf("allow: %+v", va.Allow)
	}
}

func TestParseYAMLErrors(t *testing.T) {
	const head = "apiVersion: securityenforcement.admission.cloud.ibm.com/v1beta1\nkind: ClusterImagePolicy\nmetadata:\n  name: c\n"
	tests := []struct {
		name, doc string
		want      []string
	}{
		{"unknown field in trust", head + "spec:\n  repositories:\n  - name: '*'\n    policy:\n      trust:\n        enabled: true\n        signerSecret: [{name: a}]\n",
			[]string{"x.yaml: document 1:", "line 11", `unknown field "signerSecret" in trust`}},
		{"unknown field in vulnerability", head + "spec:\n  repositories:\n  - name: '*'\n    policy:\n      vulnerability:\n        IBMVA: {enabled: true}\n",
			[]string{"line 10", `unknown field "IBMVA" in vulnerability`}},
		{"portieris trustServer", head + "spec:\n  repositories:\n  - name: '*'\n    policy:\n      trust:\n        enabled: true\n        trustServer: https://notary\n",
			[]string{`spec.repositories[0] "*": policy.trust.trustServer`, "not supported", "notation", "signerSecrets"}},
		{"portieris simple", head + "spec:\n  repositories:\n  - name: '*'\n    policy:\n      simple: {requirements: [{type: signedBy, keySecret: k}]}\n",
			[]string{`spec.repositories[0] "*": policy.simple`, "not supported", "notation", "trust.enabled"}},
		{"bad running", head + "spec:\n  running: kill\n", []string{`spec.running: unknown value "kill" (want report or evict)`}},
		{"bad entry running", head + "spec:\n  repositories:\n  - name: '*'\n    running: Evict\n", []string{`spec.repositories[0] "*": running: unknown value "Evict"`}},
		{"zero evictAfter", head + "spec:\n  evictAfter: 0s\n", []string{"spec.evictAfter: must be positive, got 0s"}},
		{"negative entry evictAfter", head + "spec:\n  repositories:\n  - name: '*'\n    evictAfter: -5m\n", []string{`spec.repositories[0] "*": evictAfter: must be positive, got -5m`}},
		{"bad evictAfter", head + "spec:\n  evictAfter: 5 minutes\n", []string{`invalid duration "5 minutes"`}},
		{"unknown top-level field", head + "spek: {}\n", []string{`unknown field "spek" in a policy document`}},
		{"policies with a value", head + "spec:\n  repositories:\n  - name: '*'\n    policies:\n      trust: {enabled: true}\n",
			[]string{`spec.repositories[0] "*"`, `unknown field "policies"`, `did you mean "policy"`}},
		{"duplicate key", head + "spec:\n  repositories: []\n  repositories: []\n", []string{"line 7", `field "repositories" set twice in spec`}},
		{"wrong type", head + "spec:\n  repositories:\n  - name: '*'\n    policy:\n      trust:\n        enabled: maybe\n", []string{"line 10", "cannot unmarshal"}},
		{"bad duration", head + "spec:\n  repositories:\n  - name: '*'\n    policy:\n      va:\n        maxReportAge: 7d\n", []string{`invalid duration "7d"`}},
		{"bad date", head + "spec:\n  repositories:\n  - name: '*'\n    policy:\n      va:\n        allow: [{id: CVE-1, expires: soon}]\n", []string{`invalid date "soon"`}},
		{"bad apiVersion", "apiVersion: v1\nkind: ConfigMap\n", []string{`unsupported apiVersion "v1"`}},
		{"no apiVersion", "kind: ImagePolicy\n", []string{"apiVersion is required"}},
		{"bad kind", "apiVersion: pullguard.dev/v1beta1\nkind: Pod\nmetadata: {name: x}\n", []string{`unknown kind "Pod"`}},
		{"image policy without namespace", "apiVersion: pullguard.dev/v1beta1\nkind: ImagePolicy\nmetadata: {name: x}\n", []string{"namespace is required"}},
		{"bad pattern", head + "spec:\n  repositories:\n  - name: quay.io/UPPER\n", []string{`repositories[0] "quay.io/UPPER"`}},
		{"syntax error", head + "spec: [\n", []string{"x.yaml: document 1:"}},
		{"error in second document", head + "---\n" + head + "spec:\n  bogus: 1\n", []string{"x.yaml: document 2:", `unknown field "bogus" in spec`}},
		{"not a mapping", "just a string\n", []string{"document 1", "cannot unmarshal"}},
		{"signerSecrets without name", head + "spec:\n  repositories:\n  - name: '*'\n    policy:\n      trust:\n        signerSecrets: [{}]\n", []string{"signerSecrets[0]: name is required"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseYAML([]byte(tc.doc), "x.yaml")
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "policy.yaml") || strings.Contains(err.Error(), "v1beta1.") || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q leaks Go type names or spans lines", err)
			}
		})
	}
}

func TestParseYAMLEmpty(t *testing.T) {
	for _, doc := range []string{"", "---\n", "# only a comment\n", "---\n---\n...\n"} {
		ps, err := ParseYAML([]byte(doc), "e.yaml")
		if err != nil || len(ps) != 0 {
			t.Errorf("%q: %d policies, %v", doc, len(ps), err)
		}
	}
	if _, err := ParseYAML(make([]byte, MaxPolicyFileBytes+1), "big.yaml"); err == nil {
		t.Error("oversize input accepted")
	}
}

func TestParseTOML(t *testing.T) {
	doc := `
[[policies]]
kind = "ImagePolicy"
name = "team-a"
namespace = "team-a"
mode = "audit"
  [[policies.repositories]]
  name = "127.0.0.1:5000/team-a/*"
  [[policies.repositories]]
  name = "*"
  fail_open = true
  [policies.repositories.policy.trust]
  enabled = true
  signers = ["release"]
  [policies.repositories.policy.va]
  enabled = true
  max_severity = "high"
  max_report_age = "24h"
  [[policies.repositories.policy.va.allow]]
  id = "CVE-1"
  expires = 2027-01-31
  [[policies.repositories.policy.va.allow]]
  id = "CVE-2"
  expires = "2027-01-31T12:00:00Z"
`
	ps, err := ParseTOML([]byte(doc), "p.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Source != "p.toml#policies[0]" || ps[0].Mode != ModeAudit || len(ps[0].Rules) != 2 {
		t.Fatalf("%+v", ps)
	}
	r0, r1 := ps[0].Rules[0], ps[0].Rules[1]
	if !r0.Checks.None() || !r1.FailOpen || r1.Checks.Trust.Signers[0] != "release" || *r1.Checks.VA.MaxReportAge != 24*time.Hour {
		t.Fatalf("rules %+v", ps[0].Rules)
	}
	a := r1.Checks.VA.Allow
	if a[0].Expires.Format(time.RFC3339Nano) != "2027-01-31T23:59:59.999999999Z" || a[1].Expires.Hour() != 12 {
		t.Fatalf("expires %v %v", a[0].Expires, a[1].Expires)
	}

	for _, tc := range []struct{ doc, want string }{
		{"[[policies]]\nkind = \"ClusterImagePolicy\"\nname = \"c\"\nbogus = 1\n", `unknown key "policies.bogus"`},
		{"[[policies]]\nkind = \"ClusterImagePolicy\"\nname = 3\n", "line 3"},
		{"[[policies]]\nkind = \"ClusterImagePolicy\"\nname = \"c\n", "line 3"},
		{"[[policies]]\nkind = \"ImagePolicy\"\nname = \"c\"\n", `p.toml#policies[0]: ImagePolicy "c": namespace is required`},
		{"[[policies]]\nkind = \"ClusterImagePolicy\"\nname = \"c\"\n[[policies.repositories]]\nname = \"*\"\n[policies.repositories.policy.va]\nmax_report_age = \"week\"\n", "line 7"},
	} {
		if _, err := ParseTOML([]byte(tc.doc), "p.toml"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.doc, err, tc.want)
		}
	}
}

// A Kubernetes ConfigMap volume: the files live in a timestamped dir, "..data" points at it,
// and each key is a symlink through "..data". Only the visible names are read, once.
func TestLoadDirConfigMapMount(t *testing.T) {
	dir := t.TempDir()
	ts := filepath.Join(dir, "..2026_11_22_11_00_00.123")
	must(t, os.Mkdir(ts, 0o755))
	must(t, os.WriteFile(filepath.Join(ts, "10-cluster.yaml"), readTestdata(t, "seed-cluster-default.yaml"), 0o644))
	must(t, os.WriteFile(filepath.Join(ts, "20-team.toml"), []byte("[[policies]]\nkind = \"ImagePolicy\"\nname = \"t\"\nnamespace = \"team\"\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(ts, "README.md"), []byte("not a policy"), 0o644))
	must(t, os.Symlink(filepath.Base(ts), filepath.Join(dir, "..data")))
	for _, n := range []string{"10-cluster.yaml", "20-team.toml", "README.md"} {
		must(t, os.Symlink(filepath.Join("..data", n), filepath.Join(dir, n)))
	}
	must(t, os.WriteFile(filepath.Join(dir, ".hidden.yaml"), []byte("garbage: ["), 0o644))
	must(t, os.Mkdir(filepath.Join(dir, "sub.yaml"), 0o755))

	ps, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].Kind != KindCluster || ps[1].Name != "t" {
		t.Fatalf("got %+v", ps)
	}
	if want := filepath.Join(dir, "10-cluster.yaml"); ps[0].Source != want {
		t.Fatalf("source %q, want %q", ps[0].Source, want)
	}
	if _, err := NewSet(ps, ""); err != nil {
		t.Fatal(err)
	}
}

func TestLoadDirErrors(t *testing.T) {
	if _, err := LoadDir(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("missing dir accepted")
	}
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("apiVersion: pullguard.dev/v1beta1\nkind: ClusterImagePolicy\nmetadata: {name: a}\nspec: {repositories: [{name: '*', polcy: {}}]}\n"), 0o644))
	_, err := LoadDir(dir)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "a.yaml")+": document 1") || !strings.Contains(err.Error(), `"polcy"`) {
		t.Fatalf("error %v", err)
	}
	must(t, os.Remove(filepath.Join(dir, "a.yaml")))
	must(t, os.Symlink("nowhere.yaml", filepath.Join(dir, "dangling.yaml")))
	if _, err := LoadDir(dir); err == nil {
		t.Fatal("dangling symlink ignored")
	}
	must(t, os.Remove(filepath.Join(dir, "dangling.yaml")))
	must(t, os.WriteFile(filepath.Join(dir, "big.yml"), make([]byte, MaxPolicyFileBytes+1), 0o644))
	if _, err := LoadDir(dir); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("oversize file: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// "kubectl get imagepolicies -A -o yaml" writes a List; the DaemonSet's agent may write JSON.
func TestParseYAMLListsAndJSON(t *testing.T) {
	list := `apiVersion: v1
kind: List
metadata: {resourceVersion: ""}
items:
- apiVersion: pullguard.dev/v1beta1
  kind: ImagePolicy
  metadata: {name: a, namespace: ns-a, uid: 1234, managedFields: [{manager: kubectl}]}
  spec: {repositories: [{name: "quay.io/*"}]}
- apiVersion: pullguard.dev/v1beta1
  kind: ClusterImagePolicy
  metadata: {name: c}
  spec: {repositories: []}
  status: {observedGeneration: 1}
`
	ps, err := ParseYAML([]byte(list), "l.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].Source != "l.yaml#doc 1 item 0" || ps[1].Kind != KindCluster || len(ps[1].Rules) != 0 {
		t.Fatalf("%+v", ps)
	}
	typed := strings.Replace(strings.Replace(list, "apiVersion: v1\nkind: List", "apiVersion: pullguard.dev/v1beta1\nkind: ImagePolicyList", 1), "kind: ClusterImagePolicy\n", "kind: ImagePolicy\n", 1)
	if _, err := ParseYAML([]byte(typed), "l.yaml"); err == nil || !strings.Contains(err.Error(), "items[1]: ImagePolicy \"c\": namespace is required") {
		t.Fatalf("typed list: %v", err)
	}
	for _, bad := range []string{
		"apiVersion: pullguard.dev/v1beta1\nkind: List\nitems: []\n",
		"apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: List, items: []}\n",
		"apiVersion: v1\nkind: List\nitems:\n- {apiVersion: pullguard.dev/v1beta1, kind: ClusterImagePolicy, metadata: {name: c}, bogus: 1}\n",
		"apiVersion: pullguard.dev/v1beta1\nkind: ClusterImagePolicy\nmetadata: {name: c}\nitems: []\n",
	} {
		if _, err := ParseYAML([]byte(bad), "l.yaml"); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}

	dir := t.TempDir()
	js := `{"apiVersion":"pullguard.dev/v1beta1","kind":"ClusterImagePolicy","metadata":{"name":"j"},"spec":{"repositories":[{"name":"*","policy":{"trust":{"enabled":true}}}]}}`
	must(t, os.WriteFile(filepath.Join(dir, "j.json"), []byte(js), 0o644))
	got, err := LoadDir(dir)
	if err != nil || len(got) != 1 || !got[0].Rules[0].Checks.Trust.Enabled {
		t.Fatalf("json: %+v %v", got, err)
	}
}
