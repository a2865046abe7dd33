package e2e

import (
	"strings"
	"testing"
	"time"

	"oras.land/oras-go/v2/registry/remote"

	"github.com/pullguard/pullguard/integration/testbed"
	"github.com/pullguard/pullguard/plugin/registry/registrytest"
	"github.com/pullguard/pullguard/plugin/trust/trusttest"
	"github.com/pullguard/pullguard/plugin/va/vatest"
)

// Vulnerability assessment end to end (issue 4): scan reports shaped like Trivy's and Grype's,
// attached to the image digest as referrers with oras-go on the distribution registry (tag
// schema) and signed by a scanner signer, decided through crictl.

const (
	sarifMediaType     = "application/sarif+json"
	trivyJSONMediaType = "application/vnd.aquasecurity.trivy.report+json"
)

var (
	critical = vatest.Vuln{ID: "CVE-2024-0001", Severity: "CRITICAL", Score: 9.8, Package: "openssl", Installed: "3.0.2", Fixed: "3.0.3"}
	medium   = vatest.Vuln{ID: "CVE-2024-0002", Severity: "MEDIUM", Score: 5.0, Package: "zlib", Installed: "1.2.11", Fixed: "1.2.12"}
	highJSON = vatest.Vuln{ID: "CVE-2024-0009", Severity: "CRITICAL", Score: 9.1, Package: "libxml2", Installed: "2.9.14", Fixed: "2.9.15"}
)

// report is a scan report to attach: its format, findings and age; signer nil leaves it unsigned.
type report struct {
	mediaType string
	age       time.Duration
	vulns     []vatest.Vuln
	signer    *trusttest.Leaf
}

// attachReport renders r for img, attaches it as a referrer of img's digest (as a scanner's CI
// step does with oras) and signs the report with r.signer. repo nil: a client for img's
// repository on the bed's registry.
func attachReport(t *testing.T, repo *remote.Repository, img testbed.PushedImage, r report) {
	t.Helper()
	if repo == nil {
		repo = repoClient(t, img.Ref, nil)
	}
	subj := describe(t, repo, img)
	created := time.Now().Add(-r.age)
	scan := vatest.Scan{ScannerVersion: "0.58.1", Created: created, Image: img.Pinned(), Vulns: r.vulns}
	data := vatest.TrivySARIF(scan)
	if r.mediaType == trivyJSONMediaType {
		data = vatest.TrivyJSON(scan)
	}
	desc := registrytest.PushArtifact(t, repo, subj, r.mediaType, r.mediaType, data,
		map[string]string{"org.opencontainers.image.created": created.UTC().Format(time.RFC3339)})
	if r.signer != nil {
		trusttest.Sign(t, repo, desc, r.signer, trusttest.JWS)
	}
}

func TestVADecisions(t *testing.T) {
	t.Parallel()
	b := sharedBed(t)
	k := newSigningKit(t)
	host := b.Registry.Host
	day := func(d int) string { return time.Now().UTC().AddDate(0, 0, d).Format(time.DateOnly) }
	va := func(repo string, knobs vaKnobs) entry { return entry{name: host + "/va/" + repo + "/*", va: &knobs} }
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() + policyTOML("va", "va",
		va("clean", vaKnobs{}),
		va("critical", vaKnobs{}),
		va("allowed", vaKnobs{allow: []exemption{{id: critical.ID, expires: day(1)}}}),
		va("expired", vaKnobs{allow: []exemption{{id: critical.ID, expires: day(-1)}}}),
		va("stale", vaKnobs{}),
		va("unsigned", vaKnobs{}),
		va("unsigned-ok", vaKnobs{requireSigned: new(false)}),
		va("wrong-signer", vaKnobs{}),
		va("none-deny", vaKnobs{}),
		va("none-allow", vaKnobs{unscanned: "allow"}),
		entry{name: host + "/va/both/*", trust: true, signers: []string{"release"}, va: &vaKnobs{}},
	)})
	scanner := k.scannerLeaf
	tests := []struct {
		name    string
		repo    string
		signed  bool    // image signed by the release signer
		report  *report // nil: no report attached
		admit   bool
		wantMsg []string
	}{
		{"clean SARIF report", "clean/sarif", false, &report{sarifMediaType, time.Hour, []vatest.Vuln{medium}, scanner}, true, nil},
		{"clean Trivy JSON report", "clean/trivy", false, &report{trivyJSONMediaType, time.Hour, []vatest.Vuln{medium}, scanner}, true, nil},
		{"critical CVE in SARIF", "critical/sarif", false, &report{sarifMediaType, time.Hour, []vatest.Vuln{medium, critical}, scanner}, false,
			[]string{"CVE-2024-0001 (critical, openssl 3.0.2)", "above max_severity high", "0.58.1", "h old"}},
		{"critical CVE in Trivy JSON", "critical/trivy", false, &report{trivyJSONMediaType, time.Hour, []vatest.Vuln{highJSON}, scanner}, false,
			[]string{"CVE-2024-0009", "libxml2"}},
		{"allow-listed CVE", "allowed/app", false, &report{sarifMediaType, time.Hour, []vatest.Vuln{critical}, scanner}, true, nil},
		{"expired exemption", "expired/app", false, &report{sarifMediaType, time.Hour, []vatest.Vuln{critical}, scanner}, false,
			[]string{"CVE-2024-0001", "exemption expired " + day(-1)}},
		{"stale report", "stale/app", false, &report{sarifMediaType, 60 * 24 * time.Hour, []vatest.Vuln{medium}, scanner}, false,
			[]string{"stale", "max_report_age"}},
		{"unsigned report", "unsigned/app", false, &report{sarifMediaType, time.Hour, []vatest.Vuln{medium}, nil}, false,
			[]string{"no trustworthy vulnerability report", "report not signed by a scanner signer", "found no signature"}},
		{"unsigned report, signing not required", "unsigned-ok/app", false, &report{sarifMediaType, time.Hour, []vatest.Vuln{medium}, nil}, true, nil},
		{"report signed by an image signer, not a scanner", "wrong-signer/app", false, &report{sarifMediaType, time.Hour, []vatest.Vuln{medium}, k.releaseLeaf}, false,
			[]string{"no trustworthy vulnerability report", "report not signed by a scanner signer"}},
		{"no report, unscanned = deny", "none-deny/app", false, nil, false, []string{"unscanned = deny"}},
		{"no report, unscanned = allow", "none-allow/app", false, nil, true, nil},
		{"trust and va both pass", "both/ok", true, &report{sarifMediaType, time.Hour, []vatest.Vuln{medium}, scanner}, true, nil},
		{"trust and va: unsigned image", "both/unsigned", false, &report{sarifMediaType, time.Hour, []vatest.Vuln{medium}, scanner}, false,
			[]string{"[release]", "found no signature"}},
		{"trust and va: critical CVE", "both/critical", true, &report{sarifMediaType, time.Hour, []vatest.Vuln{critical}, scanner}, false,
			[]string{"CVE-2024-0001"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			img := pushTiny(t, b, "va/"+tc.repo+":v1")
			if tc.signed {
				sign(t, img, k.releaseLeaf, trusttest.JWS, nil)
			}
			if tc.report != nil {
				attachReport(t, nil, img, *tc.report)
			}
			r := pullIn(t, ctx, b, pg, "va", "va", img.Ref)
			if !tc.admit {
				assertDenial(t, r, denialPrefix, append(tc.wantMsg, `for namespace "va"`, img.Digest)...)
				assertDeniedPullLeftNothing(t, ctx, b, img)
				return
			}
			if r.Err != nil {
				t.Fatalf("denied, want admitted: %v", r)
			}
			assertPinnedPull(t, b, pg, img)
			// An admission without any report is marked so in the audit log.
			if unscanned := len(pg.LogLines(`"unscanned":true`, img.Digest)) > 0; unscanned != (tc.report == nil) {
				t.Errorf("audit line marked unscanned: %v, want %v", unscanned, tc.report == nil)
			}
		})
	}
}

// TestVAReferrersAPIRegistry: reports and their signatures found through the OCI referrers API
// (in-process registry; nothing under the tag schema), containerd pulling from it.
func TestVAReferrersAPIRegistry(t *testing.T) {
	t.Parallel()
	b := sharedBed(t)
	ctx := testCtx(t)
	k := newSigningKit(t)
	srv := registrytest.Start(t, registrytest.Config{Referrers: true})
	if err := b.AllowPlainHTTP(srv.Host); err != nil {
		t.Fatal(err)
	}
	reg := testbed.RegistryAt(srv.Host, nil)
	clean := pushTinyTo(t, reg, "varef/clean:v1")
	vulnerable := pushTinyTo(t, reg, "varef/vulnerable:v1")
	attachReport(t, srv.Repo(t, "varef/clean"), clean, report{sarifMediaType, time.Hour, []vatest.Vuln{medium}, k.scannerLeaf})
	attachReport(t, srv.Repo(t, "varef/vulnerable"), vulnerable, report{trivyJSONMediaType, time.Hour, []vatest.Vuln{critical}, k.scannerLeaf})
	if _, err := srv.Repo(t, "varef/clean").Resolve(ctx, strings.Replace(clean.Digest, ":", "-", 1)); err == nil {
		t.Fatalf("a referrers tag-schema index exists for %s; the test would not exercise the referrers API", clean.Digest)
	}
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() +
		policyTOML("varef", "varef", entry{name: srv.Host + "/varef/*", va: &vaKnobs{}})})

	if r := pullIn(t, ctx, b, pg, "varef", "vr", clean.Ref); r.Err != nil {
		t.Fatalf("pull of an image with a clean signed report (referrers API): %v", r)
	}
	assertPinnedPull(t, b, pg, clean)
	assertDenial(t, pullIn(t, ctx, b, pg, "varef", "vr", vulnerable.Ref), denialPrefix, "CVE-2024-0001", "openssl")
	assertDeniedPullLeftNothing(t, ctx, b, vulnerable)
}
