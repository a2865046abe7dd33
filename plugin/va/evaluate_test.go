package va_test

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pullguard/pullguard/plugin/va"
)

var evalNow = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

func evalReport(findings ...va.Finding) *va.Report {
	return &va.Report{Format: va.FormatSARIF, Scanner: "Trivy", ScannerVersion: "0.58.1", CreatedAt: evalNow.Add(-2*time.Hour - 13*time.Minute), Findings: findings}
}

func fnd(id string, sev va.Severity, pkg string, fix va.FixState) va.Finding {
	f := va.Finding{ID: id, Severity: sev, Package: pkg, InstalledVersion: "1.0", Fix: fix}
	if fix == va.FixAvailable {
		f.FixedVersion = "1.1"
	}
	return f
}

func date(s string) time.Time {
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		panic(err)
	}
	return t
}

func ids(fs []va.Finding) string {
	var out []string
	for _, f := range fs {
		out = append(out, f.ID+"/"+f.Package)
	}
	return strings.Join(out, ",")
}

func TestEvaluate(t *testing.T) {
	high := va.Options{MaxSeverity: va.SeverityHigh}
	crit := fnd("CVE-2024-0001", va.SeverityCritical, "openssl", va.FixAvailable)
	critUnfixed := fnd("CVE-2024-0002", va.SeverityCritical, "zlib", va.FixNotAvailable)
	critFixUnknown := fnd("CVE-2024-0003", va.SeverityCritical, "curl", va.FixUnknown)
	highF := fnd("CVE-2024-0004", va.SeverityHigh, "bash", va.FixAvailable)
	unknown := fnd("CVE-2024-0005", va.SeverityUnknown, "tar", va.FixAvailable)
	low := fnd("CVE-2024-0006", va.SeverityLow, "tar", va.FixAvailable)

	with := func(o va.Options, f func(*va.Options)) va.Options { f(&o); return o }

	tests := []struct {
		name      string
		report    *va.Report
		opts      va.Options
		namespace string
		pass      bool
		offending string
		stale     bool
		exempted  int
		unfixed   int
		expired   []va.ExpiredExemption
		reason    []string // substrings of Reason
	}{
		{name: "nil report", report: nil, opts: high, reason: []string{"no vulnerability report"}},
		{name: "clean", report: evalReport(), opts: high, pass: true, reason: []string{"passes max_severity high: 0 findings"}},
		{name: "one finding passing", report: evalReport(low), opts: high, pass: true, reason: []string{"passes max_severity high: 1 finding, 0 exempted"}},
		{name: "at threshold passes", report: evalReport(highF, low), opts: high, pass: true},
		{name: "above threshold denies", report: evalReport(highF, crit), opts: high, offending: "CVE-2024-0001/openssl",
			reason: []string{"has 1 finding above max_severity high: CVE-2024-0001 (critical, openssl 1.0)", "Trivy 0.58.1", "2h13m old"}},
		{name: "max none denies low", report: evalReport(low), opts: va.Options{MaxSeverity: va.SeverityNone}, offending: "CVE-2024-0006/tar"},
		{name: "max critical admits everything rated", report: evalReport(crit, highF), opts: va.Options{MaxSeverity: va.SeverityCritical}, pass: true},
		{name: "unknown counts as critical by default", report: evalReport(unknown), opts: va.Options{MaxSeverity: va.SeverityHigh}, offending: "CVE-2024-0005/tar",
			reason: []string{"CVE-2024-0005 (unknown, counted as critical, tar 1.0)"}},
		{name: "unknown counts as critical even under max critical? no: critical is admitted", report: evalReport(unknown), opts: va.Options{MaxSeverity: va.SeverityCritical}, pass: true},
		{name: "unknown mapped to low by config", report: evalReport(unknown), opts: with(high, func(o *va.Options) { o.UnknownSeverity = va.SeverityLow }), pass: true},
		{name: "unknown mapped to high, max medium", report: evalReport(unknown), opts: va.Options{MaxSeverity: va.SeverityMedium, UnknownSeverity: va.SeverityHigh}, offending: "CVE-2024-0005/tar",
			reason: []string{"unknown, counted as high"}},
		{name: "ignore_unfixed skips only positively unfixed", report: evalReport(crit, critUnfixed, critFixUnknown),
			opts: with(high, func(o *va.Options) { o.IgnoreUnfixed = true }), offending: "CVE-2024-0001/openssl,CVE-2024-0003/curl", unfixed: 1},
		{name: "without ignore_unfixed unfixed deny", report: evalReport(critUnfixed), opts: high, offending: "CVE-2024-0002/zlib"},
		{name: "exemption admits", report: evalReport(crit), opts: with(high, func(o *va.Options) {
			o.Allow = []va.Exemption{{ID: "cve-2024-0001"}}
		}), pass: true, exempted: 1, reason: []string{"1 exempted"}},
		{name: "exemption for another id does not", report: evalReport(crit), opts: with(high, func(o *va.Options) {
			o.Allow = []va.Exemption{{ID: "CVE-2024-0009"}}
		}), offending: "CVE-2024-0001/openssl"},
		{name: "exemption scoped to this namespace", namespace: "team-a", report: evalReport(crit), opts: with(high, func(o *va.Options) {
			o.Allow = []va.Exemption{{ID: "CVE-2024-0001", Namespaces: []string{"team-b", "team-a"}}}
		}), pass: true, exempted: 1},
		{name: "exemption scoped to other namespaces does not apply", namespace: "team-c", report: evalReport(crit), opts: with(high, func(o *va.Options) {
			o.Allow = []va.Exemption{{ID: "CVE-2024-0001", Namespaces: []string{"team-a"}}}
		}), offending: "CVE-2024-0001/openssl"},
		{name: "expired exemption denies and says so", report: evalReport(crit), opts: with(high, func(o *va.Options) {
			o.Allow = []va.Exemption{{ID: "CVE-2024-0001", Expires: date("2026-01-31")}}
		}), offending: "CVE-2024-0001/openssl", expired: []va.ExpiredExemption{{ID: "CVE-2024-0001", Expires: date("2026-01-31")}},
			reason: []string{"CVE-2024-0001 exemption expired 2026-01-31"}},
		{name: "date exemption covers its whole last day", report: evalReport(crit), opts: with(high, func(o *va.Options) {
			o.Allow = []va.Exemption{{ID: "CVE-2024-0001", Expires: date("2026-11-22")}}
		}), pass: true, exempted: 1},
		{name: "instant exemption stops at the instant", report: evalReport(crit), opts: with(high, func(o *va.Options) {
			o.Allow = []va.Exemption{{ID: "CVE-2024-0001", Expires: evalNow}}
		}), offending: "CVE-2024-0001/openssl", expired: []va.ExpiredExemption{{ID: "CVE-2024-0001", Expires: evalNow}}},
		{name: "a live exemption beats an expired one for the same id", report: evalReport(crit), opts: with(high, func(o *va.Options) {
			o.Allow = []va.Exemption{{ID: "CVE-2024-0001", Expires: date("2025-01-01")}, {ID: "CVE-2024-0001", Expires: date("2027-01-01")}}
		}), pass: true, exempted: 1},
		{name: "expired exemption in another namespace is not reported", namespace: "x", report: evalReport(crit), opts: with(high, func(o *va.Options) {
			o.Allow = []va.Exemption{{ID: "CVE-2024-0001", Expires: date("2025-01-01"), Namespaces: []string{"y"}}}
		}), offending: "CVE-2024-0001/openssl"},
		{name: "exemption below threshold is irrelevant", report: evalReport(low), opts: with(high, func(o *va.Options) {
			o.Allow = []va.Exemption{{ID: "CVE-2024-0006"}}
		}), pass: true},
		{name: "stale report denies even when clean", report: evalReport(), opts: with(high, func(o *va.Options) { o.MaxReportAge = time.Hour }),
			stale: true, reason: []string{"is stale: older than max_report_age 1h", "2h13m old"}},
		{name: "fresh enough", report: evalReport(), opts: with(high, func(o *va.Options) { o.MaxReportAge = 3 * time.Hour }), pass: true},
		{name: "undated report with max age denies", report: &va.Report{Scanner: "grype"}, opts: with(high, func(o *va.Options) { o.MaxReportAge = time.Hour }),
			stale: true, reason: []string{"(grype, undated)", "no creation time"}},
		{name: "undated report without max age is judged on findings", report: &va.Report{Scanner: "grype"}, opts: high, pass: true},
		{name: "report from the future denies", report: &va.Report{Scanner: "grype", CreatedAt: evalNow.Add(time.Hour)}, opts: high,
			stale: true, reason: []string{"dated in the future"}},
		{name: "small clock skew tolerated", report: &va.Report{Scanner: "grype", CreatedAt: evalNow.Add(time.Minute)}, opts: high, pass: true},
		{name: "stale and offending both reported", report: evalReport(crit), opts: with(high, func(o *va.Options) { o.MaxReportAge = time.Hour }),
			stale: true, offending: "CVE-2024-0001/openssl", reason: []string{"stale", "CVE-2024-0001"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := va.Evaluate(tt.report, tt.opts, tt.namespace, evalNow)
			if res.Pass != tt.pass || res.Stale != tt.stale || ids(res.Offending) != tt.offending ||
				res.Exempted != tt.exempted || res.Unfixed != tt.unfixed || fmt.Sprint(res.Expired) != fmt.Sprint(tt.expired) {
				t.Fatalf("got pass=%v stale=%v offending=%q exempted=%d unfixed=%d expired=%v\nwant pass=%v stale=%v offending=%q exempted=%d unfixed=%d expired=%v\nreason: %s",
					res.Pass, res.Stale, ids(res.Offending), res.Exempted, res.Unfixed, res.Expired,
					tt.pass, tt.stale, tt.offending, tt.exempted, tt.unfixed, tt.expired, res.Reason)
			}
			for _, want := range tt.reason {
				if !strings.Contains(res.Reason, want) {
					t.Errorf("reason %q lacks %q", res.Reason, want)
				}
			}
		})
	}
}

func TestEvaluateOrderCountsAndMessageBound(t *testing.T) {
	var fs []va.Finding
	for i := range 9 {
		fs = append(fs, fnd(fmt.Sprintf("CVE-2024-%04d", 20-i), va.SeverityHigh, "p", va.FixAvailable))
	}
	fs = append(fs,
		fnd("CVE-2023-0002", va.SeverityUnknown, "u", va.FixAvailable),
		fnd("CVE-2023-0003", va.SeverityCritical, "c", va.FixAvailable),
		fnd("CVE-2023-0001", va.SeverityCritical, "c", va.FixAvailable),
		fnd("CVE-2023-0009", va.SeverityLow, "l", va.FixAvailable),
		fnd("CVE-2023-0010", va.SeverityNone, "n", va.FixAvailable),
	)
	res := va.Evaluate(evalReport(fs...), va.Options{MaxSeverity: va.SeverityMedium}, "", evalNow)
	if res.Pass {
		t.Fatal("passed")
	}
	wantOrder := []string{"CVE-2023-0001", "CVE-2023-0003", "CVE-2023-0002", "CVE-2024-0012", "CVE-2024-0013"}
	for i, id := range wantOrder {
		if res.Offending[i].ID != id {
			t.Fatalf("offending[%d] = %s, want %s (order %s)", i, res.Offending[i].ID, id, ids(res.Offending))
		}
	}
	if len(res.Offending) != 12 {
		t.Fatalf("%d offending", len(res.Offending))
	}
	want := va.Counts{Critical: 2, High: 9, Low: 1, None: 1, Unknown: 1}
	if res.Counts != want {
		t.Fatalf("counts %+v, want %+v", res.Counts, want)
	}
	const wantReason = "vulnerability report (Trivy 0.58.1, 2h13m old) has 12 findings above max_severity medium: " +
		"CVE-2023-0001 (critical, c 1.0), CVE-2023-0003 (critical, c 1.0), CVE-2023-0002 (unknown, counted as critical, u 1.0), " +
		"CVE-2024-0012 (high, p 1.0), CVE-2024-0013 (high, p 1.0), and 7 more"
	if res.Reason != wantReason {
		t.Fatalf("reason\n got %q\nwant %q", res.Reason, wantReason)
	}
	if got := res.Message(1); !strings.HasSuffix(got, "CVE-2023-0001 (critical, c 1.0), and 11 more") {
		t.Fatalf("Message(1) = %q", got)
	}

	// The audit log carries the full counts.
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, nil)).Info("va", "va", res)
	for _, want := range []string{
		"va.pass=false", "va.scanner=\"Trivy 0.58.1\"", "va.offending=12",
		"va.counts.critical=2 va.counts.high=9 va.counts.medium=0 va.counts.low=1 va.counts.none=1 va.counts.unknown=1",
		"va.report_age=2h13m0s", "va.worst=\"[CVE-2023-0001 CVE-2023-0003 CVE-2023-0002 CVE-2024-0012 CVE-2024-0013]\"",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("log line %q lacks %q", b.String(), want)
		}
	}
}

func TestFormatAgeInMessages(t *testing.T) {
	for age, want := range map[time.Duration]string{
		45 * time.Second:              "45s old",
		5 * time.Minute:               "5m old",
		26*time.Hour + 59*time.Minute: "1d2h old",
		9 * 24 * time.Hour:            "9d old",
	} {
		r := va.Evaluate(&va.Report{Scanner: "s", CreatedAt: evalNow.Add(-age)}, va.Options{MaxSeverity: va.SeverityHigh}, "", evalNow)
		if !strings.Contains(r.Reason, want) {
			t.Errorf("age %v: reason %q lacks %q", age, r.Reason, want)
		}
	}
}
