package policy

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A directory of policies written for Portieris (portieris.cloud.ibm.com/v1) loads as it is:
// vulnerability.ICCRVA is VA, signerSecrets are signers, mutateImage is accepted, and what
// pullguard does not act on is reported as a warning on the policy, not dropped silently.
func TestPortierisPolicies(t *testing.T) {
	ps, err := LoadDir(filepath.Join("testdata", "portieris"))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*Policy{}
	for i := range ps {
		byName[ps[i].Namespace+"/"+ps[i].Name] = &ps[i]
	}
	if len(ps) != 6 || len(byName) != 6 {
		t.Fatalf("got %d policies: %v", len(ps), keys(byName))
	}

	// Warnings name the entry and the field, and only the fields pullguard ignores get one.
	wantWarnings := map[string][]string{
		"/portieris-default-cluster-image-policy": {`spec.repositories[0] "*": policy.vulnerability.ICCRVA.account "0123456789abcdef0123456789abcdef" is ignored`},
		"argocd-apps/gitops-no-mutation": {
			`spec.repositories[0] "private.us.icr.io/mynamespace/*": policy.mutateImage (false) has no effect`,
			`spec.repositories[1] "quay.io/argoproj/*": policy.mutateImage (true) has no effect`,
		},
	}
	for key, p := range byName {
		want := wantWarnings[key]
		if len(p.Warnings) != len(want) {
			t.Errorf("%s: warnings %q, want %d", key, p.Warnings, len(want))
			continue
		}
		for i, w := range want {
			if !strings.HasPrefix(p.Warnings[i], w) {
				t.Errorf("%s: warning %q, want it to start with %q", key, p.Warnings[i], w)
			}
		}
	}

	set, err := NewSet(ps, "")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		ns, image      string
		rule           string // "" = denied
		trust, va      bool
		signers        []string
		wantPolicyName string
	}{
		{ns: "default", image: "nginx:1.25", rule: "*", trust: true, va: true, wantPolicyName: "portieris-default-cluster-image-policy"},
		{ns: "portieris", image: "icr.io/portieris/portieris:v0.13", rule: "icr.io/portieris/portieris"},
		{ns: "portieris", image: "nginx"}, // the namespace's own policy replaces the cluster's
		{ns: "kube-system", image: "registry.ng.bluemix.net/armada/x:1", rule: "registry*.bluemix.net/armada/*"},
		{ns: "kube-system", image: "nginx", rule: "*"},
		{ns: "team-a", image: "us.icr.io/team-a/app:1", rule: "us.icr.io/team-a/*", trust: true, signers: []string{"release", "qa"}},
		{ns: "team-a", image: "icr.io/other/app:1", rule: "icr.io/*"},
		{ns: "argocd-apps", image: "private.us.icr.io/mynamespace/app:1", rule: "private.us.icr.io/mynamespace/*", trust: true, signers: []string{"release"}},
		{ns: "argocd-apps", image: "quay.io/argoproj/argocd:v2", rule: "quay.io/argoproj/*"},
		{ns: "argocd-apps", image: "docker.io/library/nginx", rule: "docker.io/*"},
		{ns: "argocd-apps", image: "quay.io/other/x", rule: "quay.io/*", va: true},
	}
	for _, tc := range tests {
		m, err := set.Match(tc.ns, tc.image)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.ns, tc.image, err)
		}
		if tc.rule == "" {
			if m.Rule != nil {
				t.Errorf("%s %s: matched %q, want a denial", tc.ns, tc.image, m.Rule.Name)
			}
			continue
		}
		if m.Rule == nil {
			t.Errorf("%s %s: denied (%s), want rule %q", tc.ns, tc.image, m.Reason, tc.rule)
			continue
		}
		c := m.Rule.Checks
		if m.Rule.Name != tc.rule || c.Trust.Enabled != tc.trust || c.VA.Enabled != tc.va || !slices.Equal(c.Trust.Signers, tc.signers) {
			t.Errorf("%s %s: rule %q checks %+v; want %q trust %v va %v signers %v", tc.ns, tc.image, m.Rule.Name, c, tc.rule, tc.trust, tc.va, tc.signers)
		}
		if tc.wantPolicyName != "" && m.Policy.Name != tc.wantPolicyName {
			t.Errorf("%s %s: policy %s", tc.ns, tc.image, m.Policy)
		}
	}
}

// What pullguard cannot honour is refused with the field's name and what to use instead, never
// dropped: dropping it would admit images with fewer checks than their author asked for.
func TestPortierisRefused(t *testing.T) {
	tests := []struct {
		file string
		want []string
	}{
		{"simple.yaml", []string{"simple.yaml: document 1:", `spec.repositories[0] "icr.io/*": policy.simple (GPG simple signing) is not supported`, "notation", "trust.signerSecrets", "[[signers]]"}},
		{"trust-server.yaml", []string{"trust-server.yaml: document 1:", `spec.repositories[0] "icr.io/*": policy.trust.trustServer (a Notary v1 server) is not supported`, "notation", "trust.signerSecrets", "[[signers]]"}},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join("testdata", "portieris-refused", tc.file)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			_, err = ParseYAML(data, path)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	// An empty trustServer and a null simple ask for nothing, so there is nothing to refuse.
	doc := "apiVersion: portieris.cloud.ibm.com/v1\nkind: ClusterImagePolicy\nmetadata: {name: c}\nspec:\n  repositories:\n  - name: '*'\n    policy: {simple: null, trust: {enabled: true, trustServer: ''}}\n"
	if ps, err := ParseYAML([]byte(doc), "x.yaml"); err != nil || !ps[0].Rules[0].Checks.Trust.Enabled {
		t.Fatalf("%+v %v", ps, err)
	}
}

// The TOML form never had Portieris' fields or signerSecrets: they stay unknown keys there.
func TestTOMLRejectsCompatibilityFields(t *testing.T) {
	const head = "[[policies]]\nkind = \"ClusterImagePolicy\"\nname = \"c\"\n[[policies.repositories]]\nname = \"*\"\n"
	for _, tc := range []struct{ doc, want string }{
		{head + "[policies.repositories.policy]\nmutate_image = false\n", `unknown key "policies.repositories.policy.mutate_image"`},
		{head + "[policies.repositories.policy]\nmutateImage = false\n", `unknown key "policies.repositories.policy.mutateImage"`},
		{head + "[policies.repositories.policy.vulnerability.ICCRVA]\nenabled = true\n", `unknown key "policies.repositories.policy.vulnerability.ICCRVA"`},
		{head + "[policies.repositories.policy.simple]\nstore_url = \"x\"\n", `unknown key "policies.repositories.policy.simple"`},
		{head + "[policies.repositories.policy.trust]\ntrust_server = \"x\"\n", `unknown key "policies.repositories.policy.trust.trust_server"`},
		{head + "[[policies.repositories.policy.trust.signerSecrets]]\nname = \"x\"\n", `unknown key "policies.repositories.policy.trust.signerSecrets"`},
		{head + "policies = {}\n", `unknown key "policies.repositories.policies"`},
	} {
		if _, err := ParseTOML([]byte(tc.doc), "p.toml"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.doc, err, tc.want)
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
