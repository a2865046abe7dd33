package policy

import (
	"errors"
	"strings"
	"testing"
)

const (
	digestA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	digestB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

var trustOn = Checks{Trust: Trust{Enabled: true}}

func cluster(name string, patterns ...string) Policy {
	return Policy{Kind: KindCluster, Name: name, Source: "test", Rules: rules(patterns...)}
}

func namespaced(ns, name string, patterns ...string) Policy {
	return Policy{Kind: KindNamespace, Name: name, Namespace: ns, Source: "test", Rules: rules(patterns...)}
}

func rules(patterns ...string) []Rule {
	out := make([]Rule, len(patterns))
	for i, p := range patterns {
		out[i] = Rule{Name: p}
	}
	return out
}

// TestMatch covers the matching rules of SPEC §3 one by one. want is the pattern of the rule
// that must match, or "" for a denial whose reason contains wantReason.
func TestMatch(t *testing.T) {
	tests := []struct {
		name       string
		policies   []Policy
		ns, image  string
		want       string
		wantPolicy string
		wantReason string
	}{
		// Host anchoring.
		{name: "host/* matches its host", policies: []Policy{cluster("c", "registry.example.com/*")},
			image: "registry.example.com/x", want: "registry.example.com/*"},
		{name: "path * spans slashes", policies: []Policy{cluster("c", "registry.example.com/*")},
			image: "registry.example.com/a/b/c:1", want: "registry.example.com/*"},
		{name: "trusted host never matches inside a path", policies: []Policy{cluster("c", "registry.example.com/*")},
			image: "evil.io/registry.example.com/x", wantReason: "no repository in ClusterImagePolicy c (test) matches evil.io/registry.example.com/x:latest"},
		{name: "host prefix is not the host", policies: []Policy{cluster("c", "registry.example.com/*")},
			image: "registry.example.com.evil.io/x", wantReason: "no repository"},
		{name: "host wildcard within host", policies: []Policy{cluster("c", "registry*.bluemix.net/armada/*")},
			image: "registry.ng.bluemix.net/armada/x:1", want: "registry*.bluemix.net/armada/*"},
		{name: "host wildcard does not cross slash", policies: []Policy{cluster("c", "registry*.bluemix.net/armada/*")},
			image: "registry.evil.io/bluemix.net/armada/x", wantReason: "no repository"},
		{name: "host wildcard does not reach into the path", policies: []Policy{cluster("c", "*.example.com/app")},
			image: "evil.io/x.example.com/app", wantReason: "no repository"},
		{name: "host is case-insensitive", policies: []Policy{cluster("c", "Registry.Example.com/app")},
			image: "registry.example.COM/app", want: "Registry.Example.com/app"},
		{name: "port is part of the host", policies: []Policy{cluster("c", "127.0.0.1:5000/*")},
			image: "127.0.0.1:5001/x", wantReason: "no repository"},
		{name: "port host matches", policies: []Policy{cluster("c", "127.0.0.1:5000/*")},
			image: "127.0.0.1:5000/team/x:v1", want: "127.0.0.1:5000/*"},
		{name: "localhost is a host", policies: []Policy{cluster("c", "localhost/app")},
			image: "localhost/app:1", want: "localhost/app"},

		// Normalisation.
		{name: "short name is docker.io/library", policies: []Policy{cluster("c", "nginx")},
			image: "docker.io/library/nginx:latest", want: "nginx"},
		{name: "full pattern matches short image", policies: []Policy{cluster("c", "docker.io/library/nginx")},
			image: "nginx", want: "docker.io/library/nginx"},
		{name: "index.docker.io image is docker.io", policies: []Policy{cluster("c", "nginx")},
			image: "index.docker.io/library/nginx:1.25", want: "nginx"},
		{name: "index.docker.io pattern is docker.io", policies: []Policy{cluster("c", "index.docker.io/library/nginx")},
			image: "nginx", want: "index.docker.io/library/nginx"},
		{name: "library/ short form", policies: []Policy{cluster("c", "nginx")},
			image: "library/nginx", want: "nginx"},
		{name: "docker.io/* covers official images", policies: []Policy{cluster("c", "docker.io/*")},
			image: "nginx", want: "docker.io/*"},
		{name: "no prefix match on names", policies: []Policy{cluster("c", "nginx")},
			image: "nginxx", wantReason: "no repository"},
		{name: "same path other host", policies: []Policy{cluster("c", "nginx")},
			image: "quay.io/nginx", wantReason: "no repository"},
		{name: "user repo on hub", policies: []Policy{cluster("c", "team/*")},
			image: "docker.io/team/app", want: "team/*"},

		// Tags and digests.
		{name: "no tag matches every tag", policies: []Policy{cluster("c", "nginx")},
			image: "nginx:1.25", want: "nginx"},
		{name: "no tag matches digests", policies: []Policy{cluster("c", "nginx")},
			image: "nginx@" + digestA, want: "nginx"},
		{name: "tag pattern matches that tag", policies: []Policy{cluster("c", "nginx:1.25")},
			image: "nginx:1.25", want: "nginx:1.25"},
		{name: "tag pattern rejects other tag", policies: []Policy{cluster("c", "nginx:1.25")},
			image: "nginx:1.26", wantReason: "no repository"},
		{name: "tag pattern rejects implicit latest", policies: []Policy{cluster("c", "nginx:1.25")},
			image: "nginx", wantReason: "no repository"},
		{name: "tag pattern rejects digest-only image", policies: []Policy{cluster("c", "nginx:1.25")},
			image: "nginx@" + digestA, wantReason: "no repository"},
		{name: "tag wildcard", policies: []Policy{cluster("c", "nginx:1.*")},
			image: "nginx:1.25.3", want: "nginx:1.*"},
		{name: "digest pattern matches digest", policies: []Policy{cluster("c", "nginx@"+digestA)},
			image: "nginx@" + digestA, want: "nginx@" + digestA},
		{name: "digest pattern matches tag+digest", policies: []Policy{cluster("c", "nginx@"+digestA)},
			image: "nginx:1.25@" + digestA, want: "nginx@" + digestA},
		{name: "digest pattern rejects other digest", policies: []Policy{cluster("c", "nginx@"+digestA)},
			image: "nginx@" + digestB, wantReason: "no repository"},
		{name: "digest pattern rejects tag-only image", policies: []Policy{cluster("c", "nginx@"+digestA)},
			image: "nginx:1.25", wantReason: "no repository"},

		// Exact beats wildcard; most specific wildcard wins; ties go to the first.
		{name: "exact beats earlier wildcard", policies: []Policy{cluster("c", "docker.io/library/*", "nginx")},
			image: "nginx:1.25", want: "nginx"},
		{name: "exact beats longer wildcard", policies: []Policy{cluster("c", "docker.io/library/ngin*:1.25", "nginx")},
			image: "nginx:1.25", want: "nginx"},
		{name: "exact with tag beats exact without", policies: []Policy{cluster("c", "nginx", "nginx:1.25")},
			image: "nginx:1.25", want: "nginx:1.25"},
		{name: "longest wildcard wins", policies: []Policy{cluster("c", "*", "docker.io/library/*", "docker.io/*")},
			image: "nginx", want: "docker.io/library/*"},
		{name: "fewer wildcards break literal ties", policies: []Policy{cluster("c", "quay.io/*a*", "quay.io/a*")},
			image: "quay.io/ab", want: "quay.io/a*"},
		{name: "equal patterns: first wins", policies: []Policy{cluster("first", "quay.io/*"), cluster("second", "quay.io/*")},
			image: "quay.io/x", want: "quay.io/*", wantPolicy: "first"},
		{name: "merged cluster policies: most specific across policies", policies: []Policy{cluster("a", "*"), cluster("b", "quay.io/*")},
			image: "quay.io/x", want: "quay.io/*", wantPolicy: "b"},
		{name: "star matches everything", policies: []Policy{cluster("c", "*")},
			image: "evil.io/a/b/c@" + digestA, want: "*"},

		// Empty repositories.
		{name: "empty repositories denies", policies: []Policy{cluster("locked")},
			image: "nginx", wantReason: "policy ClusterImagePolicy locked (test) has an empty repositories list"},
		{name: "two empty policies", policies: []Policy{cluster("a"), cluster("b")},
			image: "nginx", wantReason: "policies ClusterImagePolicy a (test), ClusterImagePolicy b (test) have empty repositories lists"},
		{name: "empty policy merged with a matching one", policies: []Policy{cluster("locked"), cluster("open", "*")},
			image: "nginx", want: "*", wantPolicy: "open"},

		// Namespace policies replace cluster policies.
		{name: "namespace policy replaces cluster", policies: []Policy{cluster("c", "*"), namespaced("team-a", "p", "quay.io/*")},
			ns: "team-a", image: "nginx", wantReason: "no repository in ImagePolicy team-a/p (test) matches docker.io/library/nginx:latest"},
		{name: "namespace policy admits", policies: []Policy{cluster("c", "*"), namespaced("team-a", "p", "quay.io/*")},
			ns: "team-a", image: "quay.io/x", want: "quay.io/*", wantPolicy: "p"},
		{name: "other namespace falls back to cluster", policies: []Policy{cluster("c", "*"), namespaced("team-a", "p", "quay.io/*")},
			ns: "team-b", image: "nginx", want: "*", wantPolicy: "c"},
		{name: "no namespace means cluster only", policies: []Policy{cluster("c", "quay.io/*"), namespaced("team-a", "p", "*")},
			ns: "", image: "nginx", wantReason: "no repository in ClusterImagePolicy c"},
		{name: "empty namespace ignores namespace policies", policies: []Policy{namespaced("team-a", "p", "*")},
			ns: "", image: "nginx", wantReason: "no image policies or cluster policies for docker.io/library/nginx:latest"},
		{name: "namespace policies merge", policies: []Policy{namespaced("team-a", "p1", "quay.io/*"), namespaced("team-a", "p2", "quay.io/app")},
			ns: "team-a", image: "quay.io/app:1", want: "quay.io/app", wantPolicy: "p2"},
		{name: "empty namespace policy denies despite cluster", policies: []Policy{cluster("c", "*"), namespaced("team-a", "locked")},
			ns: "team-a", image: "nginx", wantReason: "policy ImagePolicy team-a/locked (test) has an empty repositories list"},

		// Nothing at all.
		{name: "no policies at all", policies: nil,
			ns: "team-a", image: "nginx", wantReason: "no image policies or cluster policies for docker.io/library/nginx:latest"},
		{name: "only other namespaces", policies: []Policy{namespaced("team-b", "p", "*")},
			ns: "team-a", image: "nginx", wantReason: "no image policies or cluster policies for"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewSet(tc.policies, "")
			if err != nil {
				t.Fatalf("NewSet: %v", err)
			}
			m, err := s.Match(tc.ns, tc.image)
			if err != nil {
				t.Fatalf("Match: %v", err)
			}
			if tc.want == "" {
				if m.Rule != nil {
					t.Fatalf("matched %q in %s, want denial", m.Rule.Name, m.Policy)
				}
				if !strings.Contains(m.Reason, tc.wantReason) {
					t.Fatalf("reason %q, want it to contain %q", m.Reason, tc.wantReason)
				}
				return
			}
			if m.Rule == nil {
				t.Fatalf("denied (%s), want rule %q", m.Reason, tc.want)
			}
			if m.Rule.Name != tc.want {
				t.Fatalf("matched %q, want %q", m.Rule.Name, tc.want)
			}
			if tc.wantPolicy != "" && m.Policy.Name != tc.wantPolicy {
				t.Fatalf("matched in policy %q, want %q", m.Policy.Name, tc.wantPolicy)
			}
			if m.Reason != "" {
				t.Fatalf("reason %q set on a match", m.Reason)
			}
		})
	}
}

func TestMatchFields(t *testing.T) {
	s, err := NewSet([]Policy{cluster("c", "*"), namespaced("team-a", "p", "quay.io/*")}, "")
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Match("team-a", "quay.io/x")
	if err != nil {
		t.Fatal(err)
	}
	if m.Scope != KindNamespace || m.Namespace != "team-a" || len(m.Policies) != 1 || m.Policies[0].Name != "p" {
		t.Fatalf("scope %q ns %q policies %v", m.Scope, m.Namespace, m.Policies)
	}
	if got := m.Image.String(); got != "quay.io/x:latest" {
		t.Fatalf("image %q", got)
	}
	m, err = s.Match("team-b", "nginx@"+digestA)
	if err != nil {
		t.Fatal(err)
	}
	if m.Scope != KindCluster || m.Image.String() != "docker.io/library/nginx@"+digestA {
		t.Fatalf("scope %q image %q", m.Scope, m.Image)
	}
	empty, _ := NewSet(nil, "")
	m, _ = empty.Match("x", "nginx")
	if m.Scope != "" || m.Policies != nil {
		t.Fatalf("no-policy match: scope %q policies %v", m.Scope, m.Policies)
	}
}

func TestMatchInvalidImage(t *testing.T) {
	s, err := NewSet([]Policy{cluster("c", "*")}, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, image := range []string{"", "Nginx", "nginx:", "a//b", "nginx@sha256:short", strings.Repeat("a", 2000), "sha256:" + strings.Repeat("a", 64)} {
		if _, err := s.Match("", image); !errors.Is(err, ErrInvalidImage) {
			t.Errorf("Match(%q) error %v, want ErrInvalidImage", image, err)
		}
	}
}

func TestModesAndChecks(t *testing.T) {
	audit := Policy{Kind: KindNamespace, Name: "p", Namespace: "dev", Mode: ModeAudit, Rules: []Rule{
		{Name: "quay.io/*", Checks: trustOn},
		{Name: "quay.io/strict", Checks: trustOn, Mode: ModeEnforce},
	}}
	plain := Policy{Kind: KindCluster, Name: "c", Rules: []Rule{{Name: "*"}, {Name: "quay.io/*", Checks: trustOn, FailOpen: true}}}
	tests := []struct {
		name        string
		defaultMode Mode
		ns, image   string
		wantMode    Mode
		wantNone    bool
		wantFail    bool
	}{
		{"policy mode audit", "", "dev", "quay.io/x", ModeAudit, false, false},
		{"rule overrides policy", "", "dev", "quay.io/strict", ModeEnforce, false, false},
		{"default enforce", "", "", "nginx", ModeEnforce, true, false},
		{"default mode audit from set", ModeAudit, "", "nginx", ModeAudit, true, false},
		{"entry with no checks admits", "", "prod", "nginx", ModeEnforce, true, false},
		{"fail_open carried", "", "", "quay.io/y", ModeEnforce, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewSet([]Policy{audit, plain}, tc.defaultMode)
			if err != nil {
				t.Fatal(err)
			}
			m, err := s.Match(tc.ns, tc.image)
			if err != nil || m.Rule == nil {
				t.Fatalf("match: %v %+v", err, m)
			}
			if m.Rule.Mode != tc.wantMode || m.Rule.Checks.None() != tc.wantNone || m.Rule.FailOpen != tc.wantFail {
				t.Fatalf("rule %+v: mode %q none %v failopen %v", m.Rule, m.Rule.Mode, m.Rule.Checks.None(), m.Rule.FailOpen)
			}
		})
	}
	if _, err := NewSet(nil, "permissive"); err == nil {
		t.Fatal("NewSet accepted default mode \"permissive\"")
	}
}

func TestNewSetRejects(t *testing.T) {
	sev := "severe"
	unscanned := "maybe"
	tests := []struct {
		name    string
		policy  Policy
		wantErr string
	}{
		{"empty pattern", cluster("c", ""), "empty repository name"},
		{"uppercase path", cluster("c", "quay.io/App"), "not a valid image name pattern"},
		{"host without slash", cluster("c", "registry.example.com"), `write "registry.example.com/*"`},
		{"wildcard digest", cluster("c", "nginx@sha256:*"), "digest cannot hold a wildcard"},
		{"bad digest", cluster("c", "nginx@sha256:abc"), "invalid digest"},
		{"empty tag", cluster("c", "nginx:"), "invalid tag"},
		{"white space", cluster("c", "quay.io/ x"), "white space"},
		{"image policy without namespace", namespaced("", "p", "*"), "namespace is required"},
		{"cluster policy with namespace", Policy{Kind: KindCluster, Name: "c", Namespace: "x"}, "has no namespace"},
		{"no kind", Policy{Name: "c"}, "kind is required"},
		{"bad kind", Policy{Kind: "Policy", Name: "c"}, `unknown kind "Policy"`},
		{"no name", Policy{Kind: KindCluster}, "name is required"},
		{"bad policy mode", Policy{Kind: KindCluster, Name: "c", Mode: "dry-run"}, `unknown mode "dry-run"`},
		{"bad rule mode", Policy{Kind: KindCluster, Name: "c", Rules: []Rule{{Name: "*", Mode: "warn"}}}, `repositories[0] "*": unknown mode "warn"`},
		{"bad severity", Policy{Kind: KindCluster, Name: "c", Rules: []Rule{{Name: "*", Checks: Checks{VA: VA{Enabled: true, MaxSeverity: &sev}}}}}, `unknown severity "severe"`},
		{"bad unscanned", Policy{Kind: KindCluster, Name: "c", Rules: []Rule{{Name: "*", Checks: Checks{VA: VA{Unscanned: &unscanned}}}}}, `va unscanned`},
		{"exemption without id", Policy{Kind: KindCluster, Name: "c", Rules: []Rule{{Name: "*", Checks: Checks{VA: VA{Allow: []Exemption{{}}}}}}}, "allow[0]: id is required"},
		{"empty signer", Policy{Kind: KindCluster, Name: "c", Rules: []Rule{{Name: "*", Checks: Checks{Trust: Trust{Enabled: true, Signers: []string{""}}}}}}, "empty signer name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.policy.Source = "src.yaml"
			_, err := NewSet([]Policy{tc.policy}, "")
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), "src.yaml: ") {
				t.Fatalf("error %v, want it to start with the source and contain %q", err, tc.wantErr)
			}
		})
	}
	_, err := NewSet([]Policy{cluster("c", "*"), {Kind: KindCluster, Name: "c", Source: "other.yaml"}}, "")
	if err == nil || !strings.Contains(err.Error(), "duplicate policy") {
		t.Fatalf("duplicate policy accepted: %v", err)
	}
}

func TestHash(t *testing.T) {
	base := []Policy{cluster("c", "*"), namespaced("a", "p", "quay.io/*")}
	h := func(ps []Policy, mode Mode) string {
		t.Helper()
		s, err := NewSet(ps, mode)
		if err != nil {
			t.Fatal(err)
		}
		return s.Hash()
	}
	h0 := h(base, "")
	if len(h0) != 64 || h0 != h(base, "") {
		t.Fatalf("hash %q not stable", h0)
	}
	moved := []Policy{cluster("c", "*"), namespaced("a", "p", "quay.io/*")}
	moved[0].Source = "elsewhere.yaml"
	if h(moved, "") != h0 {
		t.Fatal("hash depends on the source")
	}
	changed := []Policy{cluster("c", "*"), namespaced("a", "p", "quay.io/*")}
	changed[1].Rules[0].Checks = trustOn
	if h(changed, "") == h0 {
		t.Fatal("hash ignores checks")
	}
	if h(base, ModeAudit) == h0 {
		t.Fatal("hash ignores the effective mode")
	}
	signers := []Policy{{Kind: KindCluster, Name: "c", Rules: []Rule{{Name: "*", Checks: Checks{Trust: Trust{Enabled: true, Signers: []string{"a"}}}}}}}
	s, err := NewSet(signers, "")
	if err != nil {
		t.Fatal(err)
	}
	before := s.Hash()
	signers[0].Rules[0].Checks.Trust.Signers[0] = "b" // caller mutates its copy afterwards
	signers[0].Rules[0].Name = "quay.io/*"
	m, _ := s.Match("", "nginx")
	if m.Rule == nil || m.Rule.Checks.Trust.Signers[0] != "a" || s.Hash() != before {
		t.Fatal("Set shares memory with its input")
	}
}

func BenchmarkMatch(b *testing.B) {
	var ps []Policy
	ps = append(ps, cluster("c", "*", "docker.io/library/*", "quay.io/*", "registry*.example.com/team/*", "ghcr.io/org/app:1.*"))
	for i := 0; i < 50; i++ {
		ps = append(ps, namespaced("ns"+string(rune('a'+i%26))+string(rune('a'+i/26)), "p", "registry.example.com/team/*", "nginx", "quay.io/x/*"))
	}
	s, err := NewSet(ps, "")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if m, err := s.Match("nsaa", "registry.example.com/team/app:1.2.3"); err != nil || m.Rule == nil {
			b.Fatal(err, m)
		}
	}
}
