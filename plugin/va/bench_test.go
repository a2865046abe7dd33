package va_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pullguard/pullguard/plugin/va"
	"github.com/pullguard/pullguard/plugin/va/vatest"
)

// scan500 is the size issue 4's latency target names: one report, 500 findings.
func scan500() vatest.Scan {
	sevs := []string{"CRITICAL", "HIGH", "MEDIUM", "LOW", ""}
	s := vatest.Scan{ScannerVersion: "0.58.1", Created: t0, Image: "app"}
	for i := range 500 {
		v := vatest.Vuln{ID: fmt.Sprintf("CVE-2024-%05d", i), Severity: sevs[i%len(sevs)], Package: fmt.Sprintf("pkg%d", i%97), Installed: "1.0"}
		if i%3 == 0 {
			v.Fixed = "1.1"
		}
		s.Vulns = append(s.Vulns, v)
	}
	return s
}

func benchParse(b *testing.B, mediaType string, data []byte) {
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		r, err := va.ParseReport(mediaType, data)
		if err != nil || len(r.Findings) != 500 {
			b.Fatalf("%v, %d findings", err, len(r.Findings))
		}
	}
}

func BenchmarkParseTrivySARIF500(b *testing.B) {
	benchParse(b, va.MediaTypeSARIF, vatest.TrivySARIF(scan500()))
}

func BenchmarkParseGrypeSARIF500(b *testing.B) {
	benchParse(b, va.MediaTypeSARIF, vatest.GrypeSARIF(scan500()))
}

func BenchmarkParseTrivyJSON500(b *testing.B) {
	benchParse(b, va.MediaTypeTrivyJSON, vatest.TrivyJSON(scan500()))
}

func BenchmarkEvaluate500(b *testing.B) {
	r, err := va.ParseReport(va.MediaTypeTrivyJSON, vatest.TrivyJSON(scan500()))
	if err != nil {
		b.Fatal(err)
	}
	opts := va.Options{MaxSeverity: va.SeverityMedium, IgnoreUnfixed: true, MaxReportAge: 30 * 24 * time.Hour,
		Allow: []va.Exemption{{ID: "CVE-2024-00001"}, {ID: "CVE-2024-00002", Namespaces: []string{"a"}}, {ID: "CVE-2024-00005", Expires: t0}}}
	b.ReportAllocs()
	for b.Loop() {
		if res := va.Evaluate(r, opts, "ns", t0.Add(time.Hour)); res.Pass {
			b.Fatal("passed")
		}
	}
}

// BenchmarkReferrersReport500 is the source's share of a va-checked pull on
// loopback: list referrers, fetch manifest and blob, parse (signature
// verification excluded; plugin/trust measures its own).
func BenchmarkReferrersReport500(b *testing.B) {
	tr := newTestRegistry(&testing.T{})
	tr.attach(tr.subject, styleOras11, va.MediaTypeSARIF, vatest.TrivySARIF(scan500()), t0)
	src := va.NewReferrersSource(va.ReferrersOptions{})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		att, err := src.Report(ctx, tr.query(false))
		if err != nil || len(att.Report.Findings) != 500 {
			b.Fatalf("%v", err)
		}
	}
}
