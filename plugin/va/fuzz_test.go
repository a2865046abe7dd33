package va_test

import (
	"os"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/pullguard/pullguard/plugin/va"
	"github.com/pullguard/pullguard/plugin/va/vatest"
)

// checkReport asserts what every successfully parsed report must satisfy
// whatever the input: bounded, printable strings and in-range enums; and
// that evaluating it cannot admit while naming offenders.
func checkReport(t *testing.T, r *va.Report) {
	t.Helper()
	if r == nil {
		t.Fatal("nil report without error")
	}
	printable := func(what, s string, max int) {
		if !utf8.ValidString(s) {
			t.Fatalf("%s %q is not UTF-8", what, s)
		}
		if n := utf8.RuneCountInString(s); n > max+1 {
			t.Fatalf("%s has %d runes, limit %d", what, n, max)
		}
		for _, c := range s {
			if unicode.IsControl(c) {
				t.Fatalf("%s %q contains control character %U", what, s, c)
			}
		}
	}
	printable("scanner", r.Scanner, 128)
	printable("scanner version", r.ScannerVersion, 128)
	for _, f := range r.Findings {
		if f.ID == "" {
			t.Fatalf("finding without id: %+v", f)
		}
		printable("id", f.ID, 128)
		printable("package", f.Package, 256)
		printable("installed version", f.InstalledVersion, 128)
		printable("fixed version", f.FixedVersion, 128)
		if f.Severity < va.SeverityUnknown || f.Severity > va.SeverityCritical {
			t.Fatalf("severity out of range: %+v", f)
		}
		if (f.Fix == va.FixAvailable) != (f.FixedVersion != "") {
			t.Fatalf("fix state and fixed version disagree: %+v", f)
		}
	}
	res := va.Evaluate(r, va.Options{MaxSeverity: va.SeverityNone}, "ns", time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC))
	if res.Pass && len(res.Offending) > 0 {
		t.Fatalf("passed with offenders: %+v", res)
	}
	if !res.Pass && res.Reason == "" {
		t.Fatal("denied without a reason")
	}
	if res.Counts.Total() != len(r.Findings) {
		t.Fatalf("counts %d != findings %d", res.Counts.Total(), len(r.Findings))
	}
}

func seedScans() []vatest.Scan {
	s := sampleScan()
	return []vatest.Scan{s, {ScannerVersion: "0.1.0"}, {Vulns: s.Vulns[:1]}}
}

func FuzzSARIF(f *testing.F) {
	for _, s := range seedScans() {
		f.Add(vatest.TrivySARIF(s))
		f.Add(vatest.GrypeSARIF(s))
	}
	f.Add([]byte(`{"version":"2.1.0","runs":[{"results":[{"ruleId":"[X] CVE-1","ruleIndex":-1,"rule":{"index":3},"properties":{"security-severity":"NaN"}}]}]}`))
	f.Add([]byte(`{"version":"2.1.0","runs":[{"tool":{"driver":{"rules":[{"id":"a","properties":{"tags":[1]}}]}},"results":[]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := va.ParseSARIF(data)
		if err == nil {
			checkReport(t, r)
		}
	})
}

func FuzzTrivyJSON(f *testing.F) {
	for _, s := range seedScans() {
		f.Add(vatest.TrivyJSON(s))
		f.Add(vatest.CosignVuln(s))
	}
	f.Add([]byte(`{"SchemaVersion":2,"Results":[{"Vulnerabilities":[{"VulnerabilityID":"\u0000"}]}]}`))
	f.Add([]byte(`{"scanner":{"result":{"SchemaVersion":2}},"metadata":{"scanFinishedOn":"x"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := va.ParseTrivyJSON(data)
		if err == nil {
			checkReport(t, r)
		}
	})
}

func FuzzCycloneDX(f *testing.F) {
	for _, s := range seedScans() {
		f.Add(vatest.CycloneDX(s))
	}
	f.Add([]byte(`{"bomFormat":"CycloneDX","metadata":{"tools":{"components":[{"name":"t"}]}},"components":[{"bom-ref":"a","components":[{"bom-ref":"b"}]}],"vulnerabilities":[{"id":"CVE-1","affects":[{"ref":"b"},{"ref":"zz"}]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := va.ParseCycloneDX(data)
		if err == nil {
			checkReport(t, r)
		}
	})
}

func FuzzGrypeJSON(f *testing.F) {
	for _, s := range seedScans() {
		f.Add(vatest.GrypeJSON(s))
	}
	if data, err := os.ReadFile("testdata/grype-debian12.json"); err == nil {
		f.Add(data)
	}
	f.Add([]byte(`{"matches":[{"vulnerability":{"id":"CVE-1","severity":"Unknown","fix":{"versions":["","\u0000"],"state":"fixed"}},"relatedVulnerabilities":[{"cvss":[{"metrics":{"baseScore":-1}}]}]}],"descriptor":{"name":"grype"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := va.ParseGrypeJSON(data)
		if err == nil {
			checkReport(t, r)
		}
	})
}

func FuzzParseReport(f *testing.F) {
	for _, s := range seedScans() {
		f.Add(va.MediaTypeJSON, vatest.TrivySARIF(s))
		f.Add(va.MediaTypeJSON, vatest.CosignVuln(s))
		f.Add(va.MediaTypeJSON, vatest.CycloneDX(s))
		f.Add(va.MediaTypeTrivyJSON, vatest.TrivyJSON(s))
		f.Add(va.MediaTypeJSON, vatest.GrypeJSON(s))
		f.Add(va.MediaTypeGrypeJSON, vatest.GrypeJSON(s))
	}
	f.Add("application/JSON;charset=utf-8", []byte(`{"runs":[],"$schema":"x"}`))
	f.Fuzz(func(t *testing.T, mediaType string, data []byte) {
		r, err := va.ParseReport(mediaType, data)
		if err == nil {
			checkReport(t, r)
		}
	})
}
