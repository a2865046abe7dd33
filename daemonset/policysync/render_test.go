package policysync

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/pullguard/pullguard/plugin/policy"
)

func specOf(t testing.TB, y string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(y), &m); err != nil {
		t.Fatalf("spec: %v", err)
	}
	return m
}

func TestRender(t *testing.T) {
	known := func(s string) bool { return s == "release" }
	tests := []struct {
		name    string
		key     Key
		spec    string
		wantErr string // substring; "" = valid
		check   func(t *testing.T, p policy.Policy)
	}{
		{
			name: "seed cluster default",
			key:  Key{Kind: policy.KindCluster, Name: "default"},
			spec: `{repositories: [{name: "*", policy: {trust: {enabled: true}, va: {enabled: true}}}]}`,
			check: func(t *testing.T, p policy.Policy) {
				if len(p.Rules) != 1 || !p.Rules[0].Checks.Trust.Enabled || !p.Rules[0].Checks.VA.Enabled {
					t.Errorf("rules = %+v", p.Rules)
				}
			},
		},
		{
			name: "signerSecrets map to signers, VA knobs",
			key:  Key{Kind: policy.KindNamespace, Namespace: "team-a", Name: "p"},
			spec: `{mode: audit, repositories: [{name: "registry.example.com/team/*", failOpen: true, policy: {trust: {enabled: true, signerSecrets: [{name: release}]}, va: {enabled: true, maxSeverity: high, unscanned: allow, maxReportAge: 168h, allow: [{id: CVE-2024-1, expires: "2030-01-31"}]}}}]}`,
			check: func(t *testing.T, p policy.Policy) {
				r := p.Rules[0]
				if p.Mode != policy.ModeAudit || !r.FailOpen || len(r.Checks.Trust.Signers) != 1 || r.Checks.Trust.Signers[0] != "release" {
					t.Errorf("policy = %+v", p)
				}
				if r.Checks.VA.MaxSeverity == nil || *r.Checks.VA.MaxSeverity != "high" || len(r.Checks.VA.Allow) != 1 {
					t.Errorf("va = %+v", r.Checks.VA)
				}
				if p.Namespace != "team-a" || p.Name != "p" {
					t.Errorf("meta = %s/%s", p.Namespace, p.Name)
				}
			},
		},
		{
			name: "seed's empty policies key",
			key:  Key{Kind: policy.KindNamespace, Namespace: "ibm-system", Name: "p"},
			spec: `{repositories: [{name: "*", policies: null}]}`,
		},
		{name: "no spec denies all", key: Key{Kind: policy.KindCluster, Name: "empty"}, spec: `null`},
		{name: "unknown signer", key: Key{Kind: policy.KindCluster, Name: "c"}, spec: `{repositories: [{name: "*", policy: {trust: {enabled: true, signers: [nobody]}}}]}`, wantErr: `signer "nobody"`},
		{name: "unknown field", key: Key{Kind: policy.KindCluster, Name: "c"}, spec: `{repositories: [{name: "*", policy: {trust: {enabled: true, trustServr: x}}}]}`, wantErr: `unknown field "trustServr"`},
		{name: "refused trustServer", key: Key{Kind: policy.KindCluster, Name: "c"}, spec: `{repositories: [{name: "*", policy: {trust: {enabled: true, trustServer: x}}}]}`, wantErr: `policy.trust.trustServer (a Notary v1 server) is not supported`},
		{name: "refused simple", key: Key{Kind: policy.KindCluster, Name: "c"}, spec: `{repositories: [{name: "*", policy: {simple: {requirements: [{type: signedBy, keySecret: k}]}}}]}`, wantErr: `policy.simple (GPG simple signing) is not supported`},
		{name: "bad running", key: Key{Kind: policy.KindCluster, Name: "c"}, spec: `{running: kill}`, wantErr: `spec.running: unknown value "kill"`},
		{name: "zero evictAfter", key: Key{Kind: policy.KindCluster, Name: "c"}, spec: `{repositories: [{name: "*", evictAfter: 0s}]}`, wantErr: "evictAfter: must be positive"},
		{
			name: "portieris fields, running and evictAfter",
			key:  Key{Kind: policy.KindNamespace, Namespace: "team-a", Name: "p"},
			spec: `{running: evict, evictAfter: 2m, repositories: [{name: "*", evictAfter: 90s, policy: {mutateImage: false, vulnerability: {ICCRVA: {enabled: true, account: a}}}}, {name: "quay.io/*", running: report}]}`,
			check: func(t *testing.T, p policy.Policy) {
				r0, r1 := p.Rules[0], p.Rules[1]
				if !r0.Checks.VA.Enabled || r0.Running != policy.RunningEvict || r0.EvictAfter != 90*time.Second || r1.Running != policy.RunningReport || r1.EvictAfter != 2*time.Minute {
					t.Errorf("rules %+v", p.Rules)
				}
				if len(p.Warnings) != 2 {
					t.Errorf("warnings %q", p.Warnings)
				}
			},
		},
		{name: "bad pattern", key: Key{Kind: policy.KindCluster, Name: "c"}, spec: `{repositories: [{name: "UPPER/Case:tag:x"}]}`, wantErr: "repositories[0]"},
		{name: "bad severity", key: Key{Kind: policy.KindCluster, Name: "c"}, spec: `{repositories: [{name: "*", policy: {va: {enabled: true, maxSeverity: extreme}}}]}`, wantErr: "severity"},
		{name: "bad mode", key: Key{Kind: policy.KindCluster, Name: "c"}, spec: `{mode: warn}`, wantErr: "mode"},
		{name: "namespace on cluster policy", key: Key{Kind: policy.KindCluster, Namespace: "x", Name: "c"}, spec: `{}`, wantErr: "no namespace"},
		{name: "bad name", key: Key{Kind: policy.KindNamespace, Namespace: "a", Name: "A_b"}, spec: `{}`, wantErr: "invalid name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			obj := Object{Key: tc.key, UID: "u1", ResourceVersion: "7", Generation: 2, Spec: specOf(t, tc.spec)}
			r, err := Render(obj, "/etc/pullguard/crd-policies", known)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			if want := filepath.Join("/etc/pullguard/crd-policies", tc.key.FileName()); r.Policy.Source != want {
				t.Errorf("source = %q, want %q", r.Policy.Source, want)
			}
			// What the daemon will read back is the same policy.
			ps, err := policy.ParseYAML(r.Data, r.Policy.Source)
			if err != nil || len(ps) != 1 || ps[0].Kind != tc.key.Kind {
				t.Fatalf("reparse: %v %+v", err, ps)
			}
			if tc.check != nil {
				tc.check(t, r.Policy)
			}
		})
	}
}

func TestRenderUnknownSignerIsTyped(t *testing.T) {
	obj := Object{Key: Key{Kind: policy.KindCluster, Name: "c"}, Spec: specOf(t, `{repositories: [{name: "*", policy: {trust: {enabled: true, signerSecrets: [{name: x}]}}}]}`)}
	if _, err := Render(obj, "d", func(string) bool { return false }); !errors.Is(err, ErrUnknownSigner) {
		t.Fatalf("err = %v, want ErrUnknownSigner", err)
	}
	if _, err := Render(obj, "d", nil); err != nil {
		t.Fatalf("without a signer check: %v", err)
	}
}

func TestFileNames(t *testing.T) {
	for k, want := range map[Key]string{
		{Kind: policy.KindCluster, Name: "a.b-c"}:                    "ClusterImagePolicy.yaml",
		{Kind: policy.KindNamespace, Namespace: "team-a", Name: "x"}: "ImagePolicy_team-a.yaml",
	} {
		if got := k.FileName(); got != want || !ourFile(got) {
			t.Errorf("%v: file %q (ours: %v), want %q", k, got, ourFile(got), want)
		}
	}
	for _, f := range []string{"README.md", "ImagePolicy_.yaml", "ImagePolicy_A.yaml", "ImagePolicy_a_b.yaml", ".ImagePolicy_a.yaml.tmp-1", "ClusterImagePolicy_a.yaml"} {
		if ourFile(f) {
			t.Errorf("ourFile(%q) = true", f)
		}
	}
}

// FuzzRender: whatever the API server hands over, Render either rejects it or produces a file
// the daemon loads as exactly that one policy.
func FuzzRender(f *testing.F) {
	f.Add(`{repositories: [{name: "*", policy: {trust: {enabled: true}}}]}`, "ns", "n")
	f.Add(`{mode: audit, repositories: [{name: "a/b:*", policy: {va: {enabled: true, allow: [{id: x, expires: "2020-01-01"}]}}}]}`, "", "c")
	f.Add(`{repositories: [{name: "*", policies: {}}]}`, "ns", "n")
	f.Fuzz(func(t *testing.T, spec, ns, name string) {
		var m map[string]any
		if yaml.Unmarshal([]byte(spec), &m) != nil {
			return
		}
		k := Key{Kind: policy.KindNamespace, Namespace: ns, Name: name}
		if ns == "" {
			k.Kind = policy.KindCluster
		}
		r, err := Render(Object{Key: k, Spec: m}, "dir", nil)
		if err != nil {
			return
		}
		ps, err := policy.ParseYAML(r.Data, "again")
		if err != nil || len(ps) != 1 || ps[0].Name != name || ps[0].Namespace != ns {
			t.Fatalf("rendered file does not load back: %v %+v\n%s", err, ps, r.Data)
		}
	})
}
