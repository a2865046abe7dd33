package enforce

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/pullguard/pullguard/plugin/policy"
	"github.com/pullguard/pullguard/plugin/registry"
)

func mustSet(t *testing.T, pols ...policy.Policy) *policy.Set {
	t.Helper()
	s, err := policy.NewSet(pols, policy.ModeEnforce)
	if err != nil {
		t.Fatalf("NewSet: %v", err)
	}
	return s
}

func cluster(rules ...policy.Rule) policy.Policy {
	return policy.Policy{Kind: policy.KindCluster, Name: "default", Source: "cluster.yaml", Rules: rules}
}

func namespaced(ns string, rules ...policy.Rule) policy.Policy {
	return policy.Policy{Kind: policy.KindNamespace, Name: ns + "-policy", Namespace: ns, Source: ns + ".yaml", Rules: rules}
}

func TestDecide(t *testing.T) {
	trust := policy.Checks{Trust: policy.Trust{Enabled: true}}
	va := policy.Checks{VA: policy.VA{Enabled: true}}
	tests := []struct {
		name      string
		policies  []policy.Policy
		namespace string
		image     string
		verdict   Verdict
		audited   bool
		category  Category
		msgHas    []string
	}{
		{
			name:    "no policies at all denies",
			image:   "nginx",
			verdict: Deny, category: SignatureValidationFailed,
			msgHas: []string{"SignatureValidationFailed: ", "no image policies or cluster policies for"},
		},
		{
			name:     "cluster wildcard without checks admits",
			policies: []policy.Policy{cluster(policy.Rule{Name: "*"})},
			image:    "nginx", namespace: "team-a",
			verdict: Admit,
		},
		{
			name: "namespace policy replaces the cluster policy",
			policies: []policy.Policy{
				cluster(policy.Rule{Name: "*"}),
				namespaced("team-a", policy.Rule{Name: "registry.example.com/team-a/*"}),
			},
			namespace: "team-a", image: "nginx",
			verdict: Deny, category: SignatureValidationFailed,
			msgHas: []string{`namespace "team-a"`, "docker.io/library/nginx:latest"},
		},
		{
			name: "pull without a pod uses the cluster policy",
			policies: []policy.Policy{
				cluster(policy.Rule{Name: "*"}),
				namespaced("team-a", policy.Rule{Name: "registry.example.com/team-a/*"}),
			},
			image:   "nginx",
			verdict: Admit,
		},
		{
			name:     "trust required but not available denies and says why",
			policies: []policy.Policy{cluster(policy.Rule{Name: "*", Checks: trust})},
			image:    "nginx", namespace: "default",
			verdict: Deny, category: SignatureValidationFailed,
			msgHas: []string{"ClusterImagePolicy default (cluster.yaml)", `rule "*"`, "no registry access is configured"},
		},
		{
			name:     "va required but not available denies",
			policies: []policy.Policy{cluster(policy.Rule{Name: "*", Checks: va})},
			image:    "nginx", namespace: "default",
			verdict: Deny, category: SignatureValidationFailed,
			msgHas: []string{`rule "*"`},
		},
		{
			name:     "audit mode admits what it would deny",
			policies: []policy.Policy{cluster(policy.Rule{Name: "*", Checks: trust, Mode: policy.ModeAudit})},
			image:    "nginx", namespace: "default",
			verdict: Admit, audited: true, category: SignatureValidationFailed,
		},
		{
			name:     "malformed image name is refused as invalid",
			policies: []policy.Policy{cluster(policy.Rule{Name: "*"})},
			image:    "UPPER/Case::bad", namespace: "default",
			verdict: Deny, category: InvalidImage,
			msgHas: []string{"InvalidImage: "},
		},
		{
			name:     "empty repositories denies everything",
			policies: []policy.Policy{namespaced("locked")},
			image:    "nginx", namespace: "locked",
			verdict: Deny, category: SignatureValidationFailed,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := New(mustSet(t, tc.policies...), Options{})
			d := e.Decide(context.Background(), Request{Op: OpPull, Namespace: tc.namespace, Image: tc.image})
			if d.Verdict != tc.verdict || d.Audited != tc.audited {
				t.Fatalf("verdict %s audited=%v, want %s audited=%v (reason %q)", d.Verdict, d.Audited, tc.verdict, tc.audited, d.Reason)
			}
			if d.Category != tc.category {
				t.Errorf("category %q, want %q", d.Category, tc.category)
			}
			msg := d.Message()
			for _, want := range tc.msgHas {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q lacks %q", msg, want)
				}
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("message spans lines: %q", msg)
			}
		})
	}
}

func TestPolicySwapTakesEffectForNextDecision(t *testing.T) {
	e := New(mustSet(t, cluster(policy.Rule{Name: "*"})), Options{})
	if d := e.Decide(context.Background(), Request{Image: "nginx"}); d.Denied() {
		t.Fatalf("first decision denied: %s", d.Reason)
	}
	e.SetPolicies(mustSet(t, cluster()))
	if d := e.Decide(context.Background(), Request{Image: "nginx"}); !d.Denied() {
		t.Fatal("decision after swapping in an empty policy admitted")
	}
}

func TestAuditLogLineHasFieldsAndNoCredentials(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	e := New(mustSet(t, cluster(policy.Rule{Name: "*"})), Options{Logger: log})
	creds := func(string, string) *registry.Credentials {
		return &registry.Credentials{Username: "alice", Password: "s3cret-pass", RegistryToken: "tok-123"}
	}
	e.Decide(context.Background(), Request{Op: OpPull, Namespace: "team-a", Image: "nginx", Credentials: creds})

	line := buf.String()
	for _, secret := range []string{"s3cret-pass", "tok-123", "alice"} {
		if strings.Contains(line, secret) {
			t.Fatalf("audit line leaks %q: %s", secret, line)
		}
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(line)), &rec); err != nil {
		t.Fatalf("audit line is not one JSON object: %v: %s", err, line)
	}
	for _, k := range []string{"namespace", "image", "digest", "policy", "rule", "verdict", "reason", "latency_ms"} {
		if _, ok := rec[k]; !ok {
			t.Errorf("audit line lacks %q: %s", k, line)
		}
	}
	if rec["verdict"] != "admit" || rec["namespace"] != "team-a" {
		t.Errorf("audit line has wrong content: %s", line)
	}
}
