package va_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pullguard/pullguard/plugin/va"
	"github.com/pullguard/pullguard/plugin/va/vatest"
)

var scanTime = time.Date(2026, 11, 20, 8, 30, 0, 0, time.UTC)

// sampleScan covers the cases the parsers must tell apart: labelled
// severities, a CVSS score disagreeing with the label, no fix, unknown
// severity, and one vulnerability in two packages.
func sampleScan() vatest.Scan {
	return vatest.Scan{
		ScannerVersion: "0.58.1",
		Created:        scanTime,
		Image:          "127.0.0.1:5000/app@sha256:1111111111111111111111111111111111111111111111111111111111111111",
		Vulns: []vatest.Vuln{
			{ID: "CVE-2024-0001", Severity: "CRITICAL", Score: 9.8, Package: "openssl", Installed: "3.0.2", Fixed: "3.0.14"},
			{ID: "CVE-2024-0002", Severity: "HIGH", Score: 9.1, Package: "zlib", Installed: "1.2.11"},
			{ID: "CVE-2024-0003", Severity: "MEDIUM", Package: "curl", Installed: "7.88.1", Fixed: "7.88.2"},
			{ID: "CVE-2024-0004", Severity: "LOW", Package: "bash", Installed: "5.2"},
			{ID: "CVE-2024-0005", Severity: "", Package: "tar", Installed: "1.34"},
			{ID: "CVE-2024-0006", Severity: "HIGH", Package: "libssl3", Installed: "3.0.2", Fixed: "3.0.14"},
			{ID: "CVE-2024-0006", Severity: "HIGH", Package: "openssl", Installed: "3.0.2", Fixed: "3.0.14"},
		},
	}
}

func byKey(t *testing.T, r *va.Report) map[string]va.Finding {
	t.Helper()
	m := map[string]va.Finding{}
	for _, f := range r.Findings {
		k := f.ID + "/" + f.Package
		if _, dup := m[k]; dup {
			t.Fatalf("duplicate finding %s", k)
		}
		m[k] = f
	}
	return m
}

func TestParseScannerOutputs(t *testing.T) {
	s := sampleScan()
	grypeUnknown := va.SeverityLow // grype writes unknown/negligible as "low" in SARIF
	tests := []struct {
		name      string
		mediaType string
		data      []byte
		format    va.Format
		scanner   string
		created   time.Time
		fixKnown  bool
		unknownAs va.Severity
	}{
		{"trivy sarif", va.MediaTypeSARIF, vatest.TrivySARIF(s), va.FormatSARIF, "Trivy 0.58.1", scanTime, true, va.SeverityUnknown},
		{"trivy sarif ratify type", va.MediaTypeTrivySARIF, vatest.TrivySARIF(s), va.FormatSARIF, "Trivy 0.58.1", scanTime, true, va.SeverityUnknown},
		{"grype sarif", va.MediaTypeSARIF, vatest.GrypeSARIF(s), va.FormatSARIF, "grype 0.58.1", time.Time{}, true, grypeUnknown},
		{"trivy json", va.MediaTypeTrivyJSON, vatest.TrivyJSON(s), va.FormatTrivyJSON, "Trivy 0.58.1", scanTime, true, va.SeverityUnknown},
		{"trivy json sniffed", va.MediaTypeJSON, vatest.TrivyJSON(s), va.FormatTrivyJSON, "Trivy 0.58.1", scanTime, true, va.SeverityUnknown},
		{"sarif sniffed", "application/json; charset=utf-8", vatest.TrivySARIF(s), va.FormatSARIF, "Trivy 0.58.1", scanTime, true, va.SeverityUnknown},
		{"cosign vuln sniffed", va.MediaTypeJSON, vatest.CosignVuln(s), va.FormatTrivyJSON, "Trivy 0.58.1", scanTime, true, va.SeverityUnknown},
		{"cyclonedx", va.MediaTypeCycloneDX, vatest.CycloneDX(s), va.FormatCycloneDX, "trivy 0.58.1", scanTime, false, va.SeverityUnknown},
		{"grype json", va.MediaTypeGrypeJSON, vatest.GrypeJSON(s), va.FormatGrypeJSON, "grype 0.58.1", scanTime, true, va.SeverityUnknown},
		{"grype json sniffed", va.MediaTypeJSON, vatest.GrypeJSON(s), va.FormatGrypeJSON, "grype 0.58.1", scanTime, true, va.SeverityUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := va.ParseReport(tt.mediaType, tt.data)
			if err != nil {
				t.Fatalf("ParseReport: %v", err)
			}
			if r.Format != tt.format || r.ScannerString() != tt.scanner || !r.CreatedAt.Equal(tt.created) {
				t.Fatalf("got format %q scanner %q created %v; want %q %q %v", r.Format, r.ScannerString(), r.CreatedAt, tt.format, tt.scanner, tt.created)
			}
			got := byKey(t, r)
			if len(got) != len(s.Vulns) {
				t.Fatalf("got %d findings, want %d: %+v", len(got), len(s.Vulns), r.Findings)
			}
			fix := func(fixed string) va.FixState {
				switch {
				case !tt.fixKnown:
					return va.FixUnknown
				case fixed == "":
					return va.FixNotAvailable
				}
				return va.FixAvailable
			}
			want := map[string]va.Finding{
				"CVE-2024-0001/openssl": {"CVE-2024-0001", va.SeverityCritical, "openssl", "3.0.2", "3.0.14", fix("3.0.14")},
				// The label wins over a CVSS score that would say critical.
				"CVE-2024-0002/zlib":    {"CVE-2024-0002", va.SeverityHigh, "zlib", "1.2.11", "", fix("")},
				"CVE-2024-0003/curl":    {"CVE-2024-0003", va.SeverityMedium, "curl", "7.88.1", "7.88.2", fix("7.88.2")},
				"CVE-2024-0004/bash":    {"CVE-2024-0004", va.SeverityLow, "bash", "5.2", "", fix("")},
				"CVE-2024-0005/tar":     {"CVE-2024-0005", tt.unknownAs, "tar", "1.34", "", fix("")},
				"CVE-2024-0006/libssl3": {"CVE-2024-0006", va.SeverityHigh, "libssl3", "3.0.2", "3.0.14", fix("3.0.14")},
				"CVE-2024-0006/openssl": {"CVE-2024-0006", va.SeverityHigh, "openssl", "3.0.2", "3.0.14", fix("3.0.14")},
			}
			for k, w := range want {
				if !tt.fixKnown {
					w.FixedVersion = ""
				}
				if got[k] != w {
					t.Errorf("%s: got %+v\nwant %+v", k, got[k], w)
				}
			}
		})
	}
}

func TestParseSARIFDetails(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		want    []va.Finding
		wantErr string
	}{
		{
			name:    "results absent means the scan did not complete",
			doc:     `{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"Trivy"}}}]}`,
			wantErr: "no results array",
		},
		{
			name:    "results null",
			doc:     `{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"Trivy"}},"results":null}]}`,
			wantErr: "no results array",
		},
		{name: "no runs", doc: `{"version":"2.1.0","runs":[]}`, wantErr: "no runs"},
		{name: "wrong version", doc: `{"version":"2.0.0","runs":[{"results":[]}]}`, wantErr: "version"},
		{name: "not json", doc: `{"version":"2.1.0","runs":[`, wantErr: "parse SARIF"},
		{name: "results not an array", doc: `{"version":"2.1.0","runs":[{"results":{}}]}`, wantErr: "results"},
		{name: "bad invocation time", doc: `{"version":"2.1.0","runs":[{"results":[],"invocations":[{"endTimeUtc":"yesterday"}]}]}`, wantErr: "invocation time"},
		{name: "result without any id", doc: `{"version":"2.1.0","runs":[{"results":[{"message":{"text":"x"}}]}]}`, wantErr: "no rule id"},
		{name: "clean", doc: `{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"Trivy","rules":[]}},"results":[]}]}`},
		{
			name: "old trivy template: [SEV] id and tags with package name",
			doc: `{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"Trivy","rules":[
				{"id":"[HIGH] CVE-2020-1","help":{"text":"Vulnerability CVE-2020-1\nSeverity: HIGH\nPackage: musl\nInstalled Version: 1.1\nFixed Version: 1.2\nLink: x"},"properties":{"tags":["vulnerability","HIGH","musl"]}}]}},
				"results":[{"ruleId":"[HIGH] CVE-2020-1","ruleIndex":0,"message":{"text":"musl: something"}}]}]}`,
			want: []va.Finding{{ID: "CVE-2020-1", Severity: va.SeverityHigh, Package: "musl", InstalledVersion: "1.1", FixedVersion: "1.2", Fix: va.FixAvailable}},
		},
		{
			name: "id from rule id when texts are absent; severity from tags, then from score",
			doc: `{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"x","rules":[
				{"id":"CVE-1","properties":{"tags":["security","critical"]}},
				{"id":"CVE-2","properties":{"security-severity":7.5}},
				{"id":"CVE-3","properties":{"security-severity":"0.0"}},
				{"id":"CVE-4","properties":{"security-severity":"11"}}]}},
				"results":[{"ruleId":"CVE-1"},{"ruleId":"CVE-2"},{"ruleId":"CVE-3"},{"ruleId":"CVE-4"},{"ruleId":"CVE-5","properties":{"security-severity":"3.1"}}]}]}`,
			want: []va.Finding{
				{ID: "CVE-1", Severity: va.SeverityCritical},
				{ID: "CVE-2", Severity: va.SeverityHigh},
				{ID: "CVE-3", Severity: va.SeverityUnknown}, // 0.0 is what scanners write when they know nothing
				{ID: "CVE-4", Severity: va.SeverityUnknown},
				{ID: "CVE-5", Severity: va.SeverityLow},
			},
		},
		{
			name: "trivy misconfiguration, secret and license results are not vulnerabilities",
			doc: `{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"Trivy","rules":[
				{"id":"DS002","name":"Misconfiguration","properties":{"tags":["misconfiguration","security","HIGH"]}},
				{"id":"aws-access-key-id","name":"Secret","properties":{"tags":["secret","security","CRITICAL"]}},
				{"id":"CVE-9","name":"LanguageSpecificPackageVulnerability","help":{"text":"Vulnerability CVE-9\nSeverity: MEDIUM\nPackage: lodash\nFixed Version: 4.17.21"}}]}},
				"results":[{"ruleId":"DS002","ruleIndex":0},{"ruleId":"aws-access-key-id","ruleIndex":1},{"ruleId":"CVE-9","ruleIndex":2,"message":{"text":"Package: lodash\nInstalled Version: 4.17.4"}}]}]}`,
			want: []va.Finding{{ID: "CVE-9", Severity: va.SeverityMedium, Package: "lodash", InstalledVersion: "4.17.4", FixedVersion: "4.17.21", Fix: va.FixAvailable}},
		},
		{
			name: "pass results and out-of-range rule index",
			doc: `{"version":"2.1.0","runs":[{"tool":{"driver":{"rules":[{"id":"CVE-1","help":{"text":"Severity: LOW"}}]}},
				"results":[{"ruleId":"CVE-0","kind":"pass"},{"ruleId":"CVE-1","ruleIndex":99}]}]}`,
			want: []va.Finding{{ID: "CVE-1", Severity: va.SeverityLow}},
		},
		{
			name: "control characters never reach messages",
			doc:  `{"version":"2.1.0","runs":[{"results":[{"ruleId":"CVE-1\u001b[31m\nforged log line","message":{"text":"Severity: HIGH"}}]}]}`,
			want: []va.Finding{{ID: "CVE-1 [31m forged log line", Severity: va.SeverityHigh}},
		},
		{
			name: "several runs, latest invocation time wins",
			doc: `{"version":"2.1.0","runs":[
				{"tool":{"driver":{"name":"grype","version":"0.80.0"}},"invocations":[{"startTimeUtc":"2026-01-01T00:00:00Z"}],"results":[{"ruleId":"CVE-1","message":{"text":"Severity: HIGH"}}]},
				{"tool":{"driver":{"name":"other"}},"invocations":[{"endTimeUtc":"2026-01-02T00:00:00Z"}],"results":[{"ruleId":"CVE-1","message":{"text":"Severity: CRITICAL"}}]}]}`,
			want: []va.Finding{{ID: "CVE-1", Severity: va.SeverityCritical}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := va.ParseSARIF([]byte(tt.doc))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSARIF: %v", err)
			}
			if len(r.Findings) != len(tt.want) {
				t.Fatalf("got %d findings %+v, want %+v", len(r.Findings), r.Findings, tt.want)
			}
			for i := range tt.want {
				if r.Findings[i] != tt.want[i] {
					t.Errorf("finding %d: got %+v\nwant %+v", i, r.Findings[i], tt.want[i])
				}
			}
		})
	}
}

func TestParseSARIFScannerAndTime(t *testing.T) {
	r, err := va.ParseSARIF([]byte(`{"version":"2.1.0","runs":[
		{"tool":{"driver":{"name":"grype","semanticVersion":"0.80.0"}},"invocations":[{"startTimeUtc":"2026-01-01T00:00:00Z"}],"results":[]},
		{"tool":{"driver":{"name":"other"}},"invocations":[{"endTimeUtc":"2026-01-02T00:00:00Z"}],"results":[]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.ScannerString() != "grype 0.80.0" || !r.CreatedAt.Equal(time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("scanner %q created %v", r.ScannerString(), r.CreatedAt)
	}
}

func TestParseTrivyJSONDetails(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		want    []va.Finding
		wantErr string
	}{
		{name: "no schema version", doc: `{"Results":[]}`, wantErr: "not a Trivy report"},
		{name: "schema 1", doc: `{"SchemaVersion":1}`, wantErr: "SchemaVersion 1"},
		{name: "bad CreatedAt", doc: `{"SchemaVersion":2,"CreatedAt":"now"}`, wantErr: "CreatedAt"},
		{name: "vuln without id", doc: `{"SchemaVersion":2,"Results":[{"Vulnerabilities":[{"PkgName":"x"}]}]}`, wantErr: "no VulnerabilityID"},
		{name: "wrong types", doc: `{"SchemaVersion":"2"}`, wantErr: "parse Trivy JSON"},
		{name: "clean image: no results at all", doc: `{"SchemaVersion":2,"ArtifactName":"x"}`},
		{
			name: "statuses, vendor severities, duplicates across targets",
			doc: `{"SchemaVersion":2,"Results":[
				{"Target":"a","Vulnerabilities":[
					{"VulnerabilityID":"CVE-1","PkgName":"p","InstalledVersion":"1","Severity":"MODERATE","Status":"affected"},
					{"VulnerabilityID":"CVE-2","PkgName":"p","InstalledVersion":"1","Severity":"CRITICAL","Status":"not_affected"},
					{"VulnerabilityID":"CVE-3","PkgName":"p","InstalledVersion":"1","Severity":"WEIRD"}]},
				{"Target":"b","Vulnerabilities":[
					{"VulnerabilityID":"CVE-1","PkgName":"p","InstalledVersion":"1","Severity":"HIGH","FixedVersion":"2"}]}]}`,
			want: []va.Finding{
				{ID: "CVE-1", Severity: va.SeverityHigh, Package: "p", InstalledVersion: "1", FixedVersion: "2", Fix: va.FixAvailable},
				{ID: "CVE-3", Severity: va.SeverityUnknown, Package: "p", InstalledVersion: "1", Fix: va.FixNotAvailable},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := va.ParseTrivyJSON([]byte(tt.doc))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseTrivyJSON: %v", err)
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

func TestParseCycloneDXRejectsSBOM(t *testing.T) {
	_, err := va.ParseReport(va.MediaTypeCycloneDX, []byte(`{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":"x"}]}`))
	if err == nil || !strings.Contains(err.Error(), "not a vulnerability report") {
		t.Fatalf("an SBOM must not pass for a clean report, got %v", err)
	}
	r, err := va.ParseCycloneDX([]byte(`{"bomFormat":"CycloneDX","metadata":{"tools":[{"name":"grype","version":"1"}]},"vulnerabilities":[
		{"id":"CVE-1","ratings":[{"severity":"medium"},{"severity":"critical"}],"affects":[{"ref":"x"}]},
		{"id":"CVE-2","ratings":[{"score":7.2}],"analysis":{"state":"exploitable"}},
		{"id":"CVE-3","ratings":[{"severity":"critical"}],"analysis":{"state":"not_affected"}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []va.Finding{{ID: "CVE-1", Severity: va.SeverityCritical, Package: "x"}, {ID: "CVE-2", Severity: va.SeverityHigh}}
	if r.ScannerString() != "grype 1" || len(r.Findings) != 2 || r.Findings[0] != want[0] || r.Findings[1] != want[1] {
		t.Fatalf("got %q %+v", r.ScannerString(), r.Findings)
	}
}

func TestParseReportRejects(t *testing.T) {
	tests := []struct {
		name, mediaType, doc string
		unknownFormat        bool
	}{
		{"unsupported media type", "application/vnd.cncf.notary.signature", `{}`, true},
		{"json of no known shape", va.MediaTypeJSON, `{"hello":"world"}`, true},
		{"json array", va.MediaTypeJSON, `[]`, false},
		{"empty", va.MediaTypeSARIF, ``, false},
		{"truncated", va.MediaTypeTrivyJSON, `{"SchemaVersion":2,"Results":[{"Vulnerabilities":[{"Vulnera`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := va.ParseReport(tt.mediaType, []byte(tt.doc))
			if err == nil {
				t.Fatalf("got report %+v, want error", r)
			}
			if errors.Is(err, va.ErrUnknownFormat) != tt.unknownFormat {
				t.Fatalf("errors.Is(%v, ErrUnknownFormat) = %v", err, !tt.unknownFormat)
			}
		})
	}
}

func TestParseSeverity(t *testing.T) {
	for in, want := range map[string]va.Severity{"none": va.SeverityNone, "LOW": va.SeverityLow, " medium ": va.SeverityMedium, "High": va.SeverityHigh, "critical": va.SeverityCritical} {
		if got, err := va.ParseSeverity(in); err != nil || got != want {
			t.Errorf("ParseSeverity(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "unknown", "severe"} {
		if _, err := va.ParseSeverity(in); err == nil {
			t.Errorf("ParseSeverity(%q) accepted", in)
		}
	}
}
