package va_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pullguard/pullguard/plugin/va"
	"github.com/pullguard/pullguard/plugin/va/vatest"
)

// testdata/grype-debian12.json is shaped as `grype -o json` writes a scan of
// a debian 12 image with a java application: a vulnerability in two
// packages of one source, fixed / not-fixed / wont-fix / unknown fix states,
// every grype severity, distribution records of unknown severity that NVD
// rates, the same jar found twice, and a match grype's VEX rules ignored.
func TestParseGrypeJSONReport(t *testing.T) {
	data, err := os.ReadFile("testdata/grype-debian12.json")
	if err != nil {
		t.Fatal(err)
	}
	want := []va.Finding{
		{ID: "CVE-2024-0101", Severity: va.SeverityCritical, Package: "libssl3", InstalledVersion: "3.0.11-1~deb12u2", FixedVersion: "3.0.14-1~deb12u1", Fix: va.FixAvailable},
		{ID: "CVE-2024-0101", Severity: va.SeverityCritical, Package: "openssl", InstalledVersion: "3.0.11-1~deb12u2", FixedVersion: "3.0.14-1~deb12u1", Fix: va.FixAvailable},
		// debian's rating wins over NVD's critical.
		{ID: "CVE-2024-0102", Severity: va.SeverityHigh, Package: "zlib1g", InstalledVersion: "1:1.2.13.dfsg-1", Fix: va.FixNotAvailable},
		{ID: "CVE-2023-0103", Severity: va.SeverityMedium, Package: "libtiff6", InstalledVersion: "4.5.0-6+deb12u1", Fix: va.FixNotAvailable},
		{ID: "CVE-2023-0104", Severity: va.SeverityLow, Package: "bash", InstalledVersion: "5.2.15-2+b7", Fix: va.FixUnknown},
		{ID: "CVE-2016-0105", Severity: va.SeverityLow, Package: "coreutils", InstalledVersion: "9.1-1", Fix: va.FixNotAvailable},
		// Unknown to debian: NVD's label, then NVD's score.
		{ID: "CVE-2024-0106", Severity: va.SeverityHigh, Package: "tar", InstalledVersion: "1.34+dfsg-1.2+deb12u1", Fix: va.FixNotAvailable},
		{ID: "CVE-2024-0107", Severity: va.SeverityMedium, Package: "perl-base", InstalledVersion: "5.36.0-7+deb12u1", Fix: va.FixNotAvailable},
		{ID: "CVE-2024-0108", Severity: va.SeverityUnknown, Package: "libc6", InstalledVersion: "2.36-9+deb12u7", Fix: va.FixUnknown},
		{ID: "GHSA-jjjh-jjxp-wpff", Severity: va.SeverityHigh, Package: "jackson-databind", InstalledVersion: "2.13.0", FixedVersion: "2.12.7.1, 2.13.4.1", Fix: va.FixAvailable},
	}
	for _, mediaType := range []string{va.MediaTypeGrypeJSON, va.MediaTypeJSON, "Application/VND.anchore.grype+json; charset=utf-8"} {
		t.Run(mediaType, func(t *testing.T) {
			r, err := va.ParseReport(mediaType, data)
			if err != nil {
				t.Fatal(err)
			}
			if r.Format != va.FormatGrypeJSON || r.ScannerString() != "grype 0.92.2" || !r.CreatedAt.Equal(time.Date(2026, 11, 20, 8, 30, 12, 123456789, time.UTC)) {
				t.Fatalf("format %q scanner %q created %v", r.Format, r.ScannerString(), r.CreatedAt)
			}
			if len(r.Findings) != len(want) {
				t.Fatalf("got %d findings, want %d: %+v", len(r.Findings), len(want), r.Findings)
			}
			for i := range want {
				if r.Findings[i] != want[i] {
					t.Errorf("finding %d: got %+v\nwant %+v", i, r.Findings[i], want[i])
				}
			}
		})
	}

	// What a policy makes of it: ignore_unfixed skips what grype says will
	// not be fixed (zlib1g, tar), never what it does not know (libc6).
	r, err := va.ParseGrypeJSON(data)
	if err != nil {
		t.Fatal(err)
	}
	res := va.Evaluate(r, va.Options{MaxSeverity: va.SeverityMedium, IgnoreUnfixed: true}, "shop", time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC))
	var ids []string
	for _, f := range res.Offending {
		ids = append(ids, f.ID+"/"+f.Package)
	}
	if res.Pass || res.Unfixed != 2 || strings.Join(ids, " ") != "CVE-2024-0101/libssl3 CVE-2024-0101/openssl CVE-2024-0108/libc6 GHSA-jjjh-jjxp-wpff/jackson-databind" {
		t.Fatalf("pass %v unfixed %d offending %v", res.Pass, res.Unfixed, ids)
	}
}

func TestParseGrypeJSONDetails(t *testing.T) {
	const desc = `"descriptor":{"name":"grype","version":"0.92.2","timestamp":"2026-11-20T08:30:12Z"}`
	tests := []struct {
		name    string
		doc     string
		want    []va.Finding
		wantErr string
	}{
		{name: "not json", doc: `{"matches":[`, wantErr: "parse grype JSON"},
		{name: "json array", doc: `[]`, wantErr: "parse grype JSON"},
		{name: "no matches array", doc: `{` + desc + `}`, wantErr: "no matches array"},
		{name: "matches null", doc: `{"matches":null,` + desc + `}`, wantErr: "no matches array"},
		{name: "matches not an array", doc: `{"matches":{},` + desc + `}`, wantErr: "parse grype JSON"},
		{name: "no descriptor", doc: `{"matches":[]}`, wantErr: "want grype"},
		{name: "another scanner", doc: `{"matches":[],"descriptor":{"name":"syft"}}`, wantErr: "want grype"},
		{name: "bad timestamp", doc: `{"matches":[],"descriptor":{"name":"grype","timestamp":"yesterday"}}`, wantErr: "descriptor timestamp"},
		{name: "match without id", doc: `{"matches":[{"vulnerability":{"severity":"High"},"artifact":{"name":"p"}}],` + desc + `}`, wantErr: "matches[0]: no vulnerability id"},
		{name: "wrong types", doc: `{"matches":[{"vulnerability":{"id":"CVE-1","fix":{"versions":"1.0"}}}],` + desc + `}`, wantErr: "parse grype JSON"},
		{name: "clean image", doc: `{"matches":[],"source":{"type":"image"},` + desc + `}`},
		{
			name: "fix: versions win over the state, a fixed state without version is not trusted",
			doc: `{"matches":[
				{"vulnerability":{"id":"CVE-1","severity":"High","fix":{"versions":["2"],"state":"not-fixed"}},"artifact":{"name":"a","version":"1"}},
				{"vulnerability":{"id":"CVE-2","severity":"High","fix":{"versions":[],"state":"fixed"}},"artifact":{"name":"a","version":"1"}},
				{"vulnerability":{"id":"CVE-3","severity":"High","fix":{"versions":["", " "],"state":"Wont-Fix"}},"artifact":{"name":"a","version":"1"}},
				{"vulnerability":{"id":"CVE-4","severity":"High"},"artifact":{"name":"a","version":"1"}}],` + desc + `}`,
			want: []va.Finding{
				{ID: "CVE-1", Severity: va.SeverityHigh, Package: "a", InstalledVersion: "1", FixedVersion: "2", Fix: va.FixAvailable},
				{ID: "CVE-2", Severity: va.SeverityHigh, Package: "a", InstalledVersion: "1", Fix: va.FixUnknown},
				{ID: "CVE-3", Severity: va.SeverityHigh, Package: "a", InstalledVersion: "1", Fix: va.FixNotAvailable},
				{ID: "CVE-4", Severity: va.SeverityHigh, Package: "a", InstalledVersion: "1", Fix: va.FixUnknown},
			},
		},
		{
			name: "severity: own label, else the worst related label, else the worst score",
			doc: `{"matches":[
				{"vulnerability":{"id":"CVE-1","severity":"Negligible"},"relatedVulnerabilities":[{"id":"CVE-1","severity":"Critical"}]},
				{"vulnerability":{"id":"CVE-2","severity":"Unknown"},"relatedVulnerabilities":[{"id":"CVE-2","severity":"Medium"},{"id":"CVE-2","severity":"High"}]},
				{"vulnerability":{"id":"CVE-3","severity":"Unknown","cvss":[{"metrics":{"baseScore":3.1}}]},"relatedVulnerabilities":[{"id":"CVE-3","severity":"Unknown","cvss":[{"metrics":{"baseScore":9.1}},{"metrics":{"baseScore":0}}]}]},
				{"vulnerability":{"id":"CVE-4","severity":"Bogus"},"relatedVulnerabilities":[{"id":"CVE-4","cvss":[{"metrics":{"baseScore":11}}]}]},
				{"vulnerability":{"id":"CVE-5"}}],` + desc + `}`,
			want: []va.Finding{
				{ID: "CVE-1", Severity: va.SeverityLow},
				{ID: "CVE-2", Severity: va.SeverityHigh},
				{ID: "CVE-3", Severity: va.SeverityCritical},
				{ID: "CVE-4", Severity: va.SeverityUnknown},
				{ID: "CVE-5", Severity: va.SeverityUnknown},
			},
		},
		{
			name: "duplicates across artifacts: same package and version fold, worst severity and best fix kept",
			doc: `{"matches":[
				{"vulnerability":{"id":"CVE-1","severity":"Medium","fix":{"state":"unknown"}},"artifact":{"name":"lib","version":"1","type":"java-archive"}},
				{"vulnerability":{"id":"CVE-1","severity":"High","fix":{"versions":["1.1"],"state":"fixed"}},"artifact":{"name":"lib","version":"1","type":"java-archive"}},
				{"vulnerability":{"id":"CVE-1","severity":"Low","fix":{"state":"not-fixed"}},"artifact":{"name":"lib","version":"2","type":"java-archive"}},
				{"vulnerability":{"id":"CVE-1","severity":"Low","fix":{"state":"not-fixed"}},"artifact":{"name":"other","version":"1","type":"deb"}}],` + desc + `}`,
			want: []va.Finding{
				{ID: "CVE-1", Severity: va.SeverityHigh, Package: "lib", InstalledVersion: "1", FixedVersion: "1.1", Fix: va.FixAvailable},
				{ID: "CVE-1", Severity: va.SeverityLow, Package: "lib", InstalledVersion: "2", Fix: va.FixNotAvailable},
				{ID: "CVE-1", Severity: va.SeverityLow, Package: "other", InstalledVersion: "1", Fix: va.FixNotAvailable},
			},
		},
		{
			name: "ignored matches are not findings",
			doc:  `{"matches":[],"ignoredMatches":[{"vulnerability":{"id":"CVE-9","severity":"Critical"},"artifact":{"name":"x"},"appliedIgnoreRules":[{"vex-status":"not_affected"}]}],` + desc + `}`,
		},
		{
			name: "control characters never reach messages",
			doc:  `{"matches":[{"vulnerability":{"id":"CVE-1\u001b[31m\nforged","severity":"High","fix":{"versions":["2\n"]}},"artifact":{"name":"p\u0007","version":"1"}}],` + desc + `}`,
			want: []va.Finding{{ID: "CVE-1 [31m forged", Severity: va.SeverityHigh, Package: "p", InstalledVersion: "1", FixedVersion: "2", Fix: va.FixAvailable}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := va.ParseGrypeJSON([]byte(tt.doc))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseGrypeJSON: %v", err)
			}
			if len(r.Findings) != len(tt.want) {
				t.Fatalf("got %+v, want %+v", r.Findings, tt.want)
			}
			for i := range tt.want {
				if r.Findings[i] != tt.want[i] {
					t.Errorf("finding %d: got %+v\nwant %+v", i, r.Findings[i], tt.want[i])
				}
			}
		})
	}
}

// A broken grype report denies; it is never skipped as "not a report"
// (which could leave the image unscanned = allow).
func TestParseReportGrypeMalformedDenies(t *testing.T) {
	tests := []struct {
		name, mediaType, doc string
	}{
		{"typed, no descriptor", va.MediaTypeGrypeJSON, `{"matches":[]}`},
		{"typed, truncated", va.MediaTypeGrypeJSON, `{"matches":[{"vulnerability":{"id":"CVE-1"`},
		{"typed, not grype's", va.MediaTypeGrypeJSON, `{"runs":[],"version":"2.1.0"}`},
		{"sniffed, other scanner's descriptor", va.MediaTypeJSON, `{"matches":[],"descriptor":{"name":"other"}}`},
		{"sniffed, matches null", va.MediaTypeJSON, `{"matches":null,"descriptor":{"name":"grype"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := va.ParseReport(tt.mediaType, []byte(tt.doc))
			if err == nil {
				t.Fatalf("got report %+v, want error", r)
			}
			if errors.Is(err, va.ErrUnknownFormat) || errors.Is(err, va.ErrNotVulnerabilityReport) {
				t.Fatalf("malformed grype report would be skipped: %v", err)
			}
		})
	}
}

func TestReferrersGrypeJSON(t *testing.T) {
	tests := []struct {
		name      string
		style     attachStyle
		mediaType string
	}{
		{"artifact type", styleOras11, va.MediaTypeGrypeJSON},
		{"config media type", styleConfigType, va.MediaTypeGrypeJSON},
		{"plain json, sniffed", styleOras11, va.MediaTypeJSON},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTestRegistry(t)
			tr.attach(tr.subject, styleOras11, va.MediaTypeSARIF, vatest.TrivySARIF(scanAt(t0, lowVuln)), t0)
			grype := tr.attach(tr.subject, tt.style, tt.mediaType, vatest.GrypeJSON(scanAt(t0.Add(time.Hour), critVuln)), t0.Add(time.Hour))
			att, err := va.NewReferrersSource(va.ReferrersOptions{}).Report(context.Background(), tr.query(false))
			if err != nil {
				t.Fatal(err)
			}
			if att.Descriptor.Digest != grype.Digest || att.MediaType != tt.mediaType || att.Report.Format != va.FormatGrypeJSON || att.Report.ScannerString() != "grype 0.58.1" {
				t.Fatalf("got %s %s %s %q, want the grype report %s", att.Descriptor.Digest, att.MediaType, att.Report.Format, att.Report.ScannerString(), grype.Digest)
			}
			res := va.Evaluate(att.Report, va.Options{MaxSeverity: va.SeverityHigh}, "team-a", t0.Add(2*time.Hour))
			if res.Pass || !strings.Contains(res.Reason, "(grype 0.58.1, 1h old) has 1 finding above max_severity high: CVE-2024-0001 (critical, openssl 3.0.2)") {
				t.Fatalf("evaluation: %s", res.Reason)
			}
		})
	}
}
