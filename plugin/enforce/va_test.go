package enforce

import (
	"context"
	"crypto/x509/pkix"
	"strings"
	"testing"
	"time"

	"github.com/pullguard/pullguard/plugin/cache"
	"github.com/pullguard/pullguard/plugin/policy"
	"github.com/pullguard/pullguard/plugin/registry/registrytest"
	"github.com/pullguard/pullguard/plugin/trust"
	"github.com/pullguard/pullguard/plugin/trust/trusttest"
	"github.com/pullguard/pullguard/plugin/va"
	"github.com/pullguard/pullguard/plugin/va/vatest"
)

const sarifType = "application/sarif+json"

// vaBed extends the trust bed with a scanner signer and a report source.
type vaBed struct {
	*trustBed
	scanner *trusttest.CA
	source  *va.ReferrersSource
	now     time.Time
}

func newVABed(t *testing.T) *vaBed {
	t.Helper()
	b := &vaBed{trustBed: newTrustBed(t), scanner: trusttest.NewCA(t, "scanner root"), now: time.Now()}
	scanners, err := trust.LoadSigners([]trust.Signer{
		{Name: "scanner", TrustStoreDir: trusttest.WriteStore(t, b.scanner), Identities: []string{"*"}, Revocation: trust.RevocationSkip},
	})
	if err != nil {
		t.Fatal(err)
	}
	sv, err := trust.NewVerifier(trust.Options{Signers: scanners, Registry: b.reg})
	if err != nil {
		t.Fatal(err)
	}
	b.source = va.NewReferrersSource(va.ReferrersOptions{Verifier: ReportVerifier{Verifier: sv}, MaxReportBytes: 8 << 20})
	return b
}

// pushScanned pushes a release-signed image with a SARIF report attached,
// signed by signer (nil: unsigned report), created at created.
func (b *vaBed) pushScanned(t *testing.T, repo string, created time.Time, signer *trusttest.CA, vulns ...vatest.Vuln) string {
	t.Helper()
	r := b.srv.Repo(t, repo)
	img := registrytest.PushImage(t, r, "v1")
	trusttest.Sign(t, r, img, b.release.Leaf(t, pkix.Name{Country: []string{"US"}, Province: []string{"WA"}, Organization: []string{"Example"}, CommonName: "release"}), trusttest.JWS)
	report := vatest.TrivySARIF(vatest.Scan{ScannerVersion: "0.58.1", Created: created, Image: b.srv.Host + "/" + repo + "@" + img.Digest.String(), Vulns: vulns})
	desc := registrytest.PushArtifact(t, r, img, sarifType, sarifType, report,
		map[string]string{"org.opencontainers.image.created": created.UTC().Format(time.RFC3339)})
	if signer != nil {
		trusttest.Sign(t, r, desc, signer.Leaf(t, pkix.Name{Country: []string{"US"}, Province: []string{"WA"}, Organization: []string{"Example"}, CommonName: "scanner"}), trusttest.JWS)
	}
	return b.srv.Host + "/" + repo + ":v1"
}

func (b *vaBed) engine(t *testing.T, def VADefaults, pols ...policy.Policy) *Engine {
	t.Helper()
	return New(mustSet(t, pols...), Options{
		Registry: b.reg, Trust: b.verifier, Facts: cache.New[*Facts](cache.Options{}),
		Reports: b.source, VADefaults: def, Timeout: 10 * time.Second,
	})
}

func ptr[T any](v T) *T { return &v }

func TestVADecisions(t *testing.T) {
	b := newVABed(t)
	fresh := b.now.Add(-time.Hour)
	critical := vatest.Vuln{ID: "CVE-2024-0001", Severity: "CRITICAL", Score: 9.8, Package: "openssl", Installed: "3.0.2", Fixed: "3.0.3"}
	medium := vatest.Vuln{ID: "CVE-2024-0002", Severity: "MEDIUM", Score: 5.0, Package: "zlib", Installed: "1.2.11", Fixed: "1.2.12"}

	clean := b.pushScanned(t, "va/clean", fresh, b.scanner, medium)
	crit := b.pushScanned(t, "va/critical", fresh, b.scanner, critical)
	stale := b.pushScanned(t, "va/stale", b.now.Add(-60*24*time.Hour), b.scanner, medium)
	unsignedReport := b.pushScanned(t, "va/unsigned-report", fresh, nil, medium)
	rogueReport := b.pushScanned(t, "va/rogue-report", fresh, b.rogue, medium)
	// An image with no report at all.
	noReport := b.srv.Host + "/va/none:v1"
	b.push(t, "va/none", "v1", b.release)

	def := VADefaults{MaxSeverity: "high", Unscanned: "deny", MaxReportAge: 30 * 24 * time.Hour, RequireSignedReport: true}
	vaRule := func(v policy.VA) policy.Rule {
		v.Enabled = true
		return policy.Rule{Name: "*", Checks: policy.Checks{VA: v}}
	}
	tomorrow, yesterday := b.now.Add(24*time.Hour), b.now.Add(-24*time.Hour)

	tests := []struct {
		name      string
		rule      policy.Rule
		image     string
		namespace string
		verdict   Verdict
		msgHas    []string
	}{
		{"clean report admits", vaRule(policy.VA{}), clean, "prod", Admit, nil},
		{"critical finding denies and names the CVE", vaRule(policy.VA{}), crit, "prod", Deny, []string{"CVE-2024-0001", "critical", "openssl"}},
		{"allow-listed CVE admits", vaRule(policy.VA{Allow: []policy.Exemption{{ID: "CVE-2024-0001", Expires: tomorrow}}}), crit, "prod", Admit, nil},
		{"expired exemption denies and says so", vaRule(policy.VA{Allow: []policy.Exemption{{ID: "CVE-2024-0001", Expires: yesterday}}}), crit, "prod", Deny, []string{"CVE-2024-0001", "expired"}},
		{"exemption scoped to another namespace does not apply", vaRule(policy.VA{Allow: []policy.Exemption{{ID: "CVE-2024-0001", Namespaces: []string{"other"}}}}), crit, "prod", Deny, []string{"CVE-2024-0001"}},
		{"rule raises max_severity", vaRule(policy.VA{MaxSeverity: ptr("critical")}), crit, "prod", Admit, nil},
		{"stale report denies", vaRule(policy.VA{}), stale, "prod", Deny, []string{"stale"}},
		{"unsigned report denies when signing is required", vaRule(policy.VA{}), unsignedReport, "prod", Deny, nil},
		{"report signed by an untrusted key denies", vaRule(policy.VA{}), rogueReport, "prod", Deny, nil},
		{"unsigned report admits when signing is not required", vaRule(policy.VA{RequireSignedReport: ptr(false)}), unsignedReport, "prod", Admit, nil},
		{"no report with unscanned=deny denies", vaRule(policy.VA{}), noReport, "prod", Deny, []string{"unscanned = deny"}},
		{"no report with unscanned=allow admits", vaRule(policy.VA{Unscanned: ptr("allow")}), noReport, "prod", Admit, nil},
		{"trust and va both required and met", policy.Rule{Name: "*", Checks: policy.Checks{Trust: policy.Trust{Enabled: true, Signers: []string{"release"}}, VA: policy.VA{Enabled: true}}}, clean, "prod", Admit, nil},
		{"trust and va both required, va fails", policy.Rule{Name: "*", Checks: policy.Checks{Trust: policy.Trust{Enabled: true}, VA: policy.VA{Enabled: true}}}, crit, "prod", Deny, []string{"CVE-2024-0001"}},
		{"trust and va both required, trust fails", policy.Rule{Name: "*", Checks: policy.Checks{Trust: policy.Trust{Enabled: true, Signers: []string{"qa"}}, VA: policy.VA{Enabled: true}}}, clean, "prod", Deny, []string{"qa"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := b.engine(t, def, cluster(tc.rule))
			d := e.Decide(context.Background(), Request{Op: OpPull, Namespace: tc.namespace, Image: tc.image})
			t.Log(d.Message())
			if d.Verdict != tc.verdict {
				t.Fatalf("verdict %s, want %s: %s", d.Verdict, tc.verdict, d.Message())
			}
			for _, want := range tc.msgHas {
				if !strings.Contains(d.Message(), want) {
					t.Errorf("message %q lacks %q", d.Message(), want)
				}
			}
			if d.Denied() && !strings.HasPrefix(d.Message(), "SignatureValidationFailed: ") {
				t.Errorf("denial has the wrong prefix: %q", d.Message())
			}
			// An admission without any report must be findable as such.
			if wantUnscanned := tc.image == noReport && d.Verdict == Admit; d.Unscanned != wantUnscanned ||
				(wantUnscanned && !strings.Contains(d.Reason, "no vulnerability scan report")) {
				t.Errorf("unscanned %v (reason %q), want %v", d.Unscanned, d.Reason, wantUnscanned)
			}
		})
	}
}

func TestVAKnobsMergeRuleOverNodeDefaults(t *testing.T) {
	e := New(nil, Options{VADefaults: VADefaults{MaxSeverity: "medium", Unscanned: "deny", IgnoreUnfixed: true, Allow: []policy.Exemption{{ID: "CVE-node"}}}})
	k, err := e.vaKnobs(policy.VA{MaxSeverity: ptr("critical"), Unscanned: ptr("allow"), Allow: []policy.Exemption{{ID: "CVE-rule"}}})
	if err != nil {
		t.Fatal(err)
	}
	if k.opts.MaxSeverity != va.SeverityCritical || k.unscanned != "allow" || !k.opts.IgnoreUnfixed || len(k.opts.Allow) != 2 {
		t.Fatalf("merged knobs %+v", k)
	}
	if _, err := e.vaKnobs(policy.VA{MaxSeverity: ptr("bogus")}); err == nil {
		t.Fatal("bogus max_severity accepted")
	}
	// An unset threshold is the documented default, never "admit nothing".
	k, _ = New(nil, Options{}).vaKnobs(policy.VA{})
	if k.opts.MaxSeverity != va.SeverityHigh {
		t.Fatalf("default max_severity %v, want high", k.opts.MaxSeverity)
	}
}
