package trust_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullguard/pullguard/plugin/registry"
	"github.com/pullguard/pullguard/plugin/registry/registrytest"
	"github.com/pullguard/pullguard/plugin/trust"
	"github.com/pullguard/pullguard/plugin/trust/trusttest"
)

// notationCLI finds the notation binary the test bed builds (make tools),
// or skips: this is a compatibility check against the real CLI, not a unit.
func notationCLI(t *testing.T) string {
	t.Helper()
	dirs := []string{os.Getenv("PULLGUARD_TOOLS_BIN"), filepath.Join("..", "..", ".tools", "bin")}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		p := filepath.Join(d, "notation")
		if _, err := os.Stat(p); err == nil {
			abs, err := filepath.Abs(p)
			if err != nil {
				t.Fatal(err)
			}
			return abs
		}
	}
	t.Skip("notation CLI not built (make tools, or PULLGUARD_TOOLS_BIN)")
	return ""
}

func runNotation(t *testing.T, bin, config string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+config)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("notation %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Signatures made by `notation sign` (its own test key and self-signed
// certificate, JWS and COSE) verify with pullguard, from registries with and
// without the referrers API.
func TestNotationCLISignaturesVerify(t *testing.T) {
	bin := notationCLI(t)
	config := t.TempDir()
	runNotation(t, bin, config, "cert", "generate-test", "--default", "release")
	cert := filepath.Join(config, "notation", "localkeys", "release.crt")
	store := t.TempDir()
	data, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(store, "release.crt"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	signer, err := trust.LoadSigner(trust.Signer{Name: "release", TrustStoreDir: store,
		Identities: []string{"x509.subject: C=US, ST=WA, L=Seattle, O=Notary, CN=release"}, Revocation: trust.RevocationSkip})
	if err != nil {
		t.Fatal(err)
	}
	for _, referrers := range []bool{true, false} {
		srv := registrytest.Start(t, registrytest.Config{Referrers: referrers})
		img := registrytest.PushImage(t, srv.Repo(t, "cli"), "v1")
		target := srv.Host + "/cli@" + img.Digest.String()
		runNotation(t, bin, config, "sign", "--insecure-registry", target)
		runNotation(t, bin, config, "sign", "--insecure-registry", "--signature-format", "cose", target)

		v := newVerifier(t, []*trust.LoadedSigner{signer}, registry.Options{}, 0)
		facts, err := v.Verify(context.Background(), repoName(t, srv.Host, "cli"), img, nil)
		if err != nil {
			t.Fatal(err)
		}
		kinds := map[string]bool{}
		for _, s := range facts.Signatures {
			if !s.Valid() {
				t.Fatalf("referrers=%v: CLI signature rejected: %s", referrers, strings.Join(facts.Explain(), "\n"))
			}
			kinds[s.MediaType] = true
		}
		if !facts.Verified("release") || !kinds[trusttest.JWS] || !kinds[trusttest.COSE] {
			t.Fatalf("referrers=%v: want JWS and COSE CLI signatures verified:\n%s", referrers, strings.Join(facts.Explain(), "\n"))
		}
	}
}

// Signatures made by trusttest (as pullguard's tests make them) verify with
// `notation verify` under an equivalent trust policy, so the tests sign like
// real pipelines do.
func TestTrusttestSignaturesVerifyWithNotationCLI(t *testing.T) {
	bin := notationCLI(t)
	config := t.TempDir()
	ca := trusttest.NewCA(t, "release root")
	caFile := filepath.Join(t.TempDir(), "release-root.pem")
	if err := os.WriteFile(caFile, ca.PEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	runNotation(t, bin, config, "cert", "add", "--type", "ca", "--store", "release", caFile)
	policy, _ := json.Marshal(map[string]any{
		"version": "1.0",
		"trustPolicies": []any{map[string]any{
			"name": "release", "registryScopes": []string{"*"},
			"signatureVerification": map[string]any{"level": "strict", "override": map[string]string{"revocation": "skip"}},
			"trustStores":           []string{"ca:release"}, "trustedIdentities": []string{releaseID},
		}},
	})
	policyFile := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(policyFile, policy, 0o644); err != nil {
		t.Fatal(err)
	}
	runNotation(t, bin, config, "policy", "import", "--force", policyFile)

	srv := registrytest.Start(t, registrytest.Config{Referrers: false})
	repo := srv.Repo(t, "lib")
	for _, envelope := range []string{trusttest.JWS, trusttest.COSE} {
		img := registrytest.PushImage(t, repo, "")
		trusttest.Sign(t, repo, img, ca.Leaf(t, releaseSubject), envelope)
		out := runNotation(t, bin, config, "verify", "--insecure-registry", srv.Host+"/lib@"+img.Digest.String())
		if !strings.Contains(out, "Successfully verified") {
			t.Fatalf("notation verify: %s", out)
		}
	}
}
