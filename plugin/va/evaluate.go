package va

import (
	"cmp"
	"log/slog"
	"slices"
	"strings"
	"time"
)

// Exemption allow-lists one vulnerability id.
type Exemption struct {
	ID string
	// Expires is zero for "never". A value at exactly midnight UTC is a date
	// as written in configuration ("expires = 2027-01-31") and covers that
	// whole UTC day; any other value is the instant the exemption stops.
	Expires time.Time
	// Namespaces limits the exemption to pulls for these namespaces; empty
	// means every namespace.
	Namespaces []string
}

// end is the first instant at which the exemption no longer applies.
func (e Exemption) end() time.Time {
	u := e.Expires.UTC()
	if u.Hour() == 0 && u.Minute() == 0 && u.Second() == 0 && u.Nanosecond() == 0 {
		return u.AddDate(0, 0, 1)
	}
	return e.Expires
}

func (e Exemption) expiredAt(now time.Time) bool {
	return !e.Expires.IsZero() && !now.Before(e.end())
}

func (e Exemption) appliesTo(namespace string) bool {
	return len(e.Namespaces) == 0 || slices.Contains(e.Namespaces, namespace)
}

// Options are the effective va knobs for one decision (node defaults merged
// with the matching policy rule by the caller).
type Options struct {
	// MaxSeverity is the worst severity admitted; findings above it deny.
	// The zero value (SeverityUnknown) sits below none and admits no finding.
	MaxSeverity Severity
	// IgnoreUnfixed skips findings the report says have no fix.
	IgnoreUnfixed bool
	Allow         []Exemption
	// MaxReportAge denies reports older than this; zero disables the check.
	MaxReportAge time.Duration
	// UnknownSeverity is what a finding of unknown severity counts as. The
	// zero value (SeverityUnknown) means critical: unknown is treated as
	// the worst unless configured otherwise.
	UnknownSeverity Severity
}

func (o Options) effective(s Severity) Severity {
	if s != SeverityUnknown {
		return s
	}
	if o.UnknownSeverity == SeverityUnknown {
		return SeverityCritical
	}
	return o.UnknownSeverity
}

// ClockSkewTolerance is how far in the future a report's creation time may
// lie before the report is rejected: a signed report claiming a future date
// would otherwise never become stale.
const ClockSkewTolerance = 10 * time.Minute

// DefaultMessageFindings bounds how many findings a denial message names.
const DefaultMessageFindings = 5

// Counts tallies findings by severity as reported.
type Counts struct {
	Critical, High, Medium, Low, None, Unknown int
}

func (c *Counts) add(s Severity) {
	switch s {
	case SeverityCritical:
		c.Critical++
	case SeverityHigh:
		c.High++
	case SeverityMedium:
		c.Medium++
	case SeverityLow:
		c.Low++
	case SeverityNone:
		c.None++
	default:
		c.Unknown++
	}
}

// Total is the number of findings counted.
func (c Counts) Total() int { return c.Critical + c.High + c.Medium + c.Low + c.None + c.Unknown }

// LogValue lets the audit log carry full counts as a group.
func (c Counts) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Int("critical", c.Critical), slog.Int("high", c.High), slog.Int("medium", c.Medium),
		slog.Int("low", c.Low), slog.Int("none", c.None), slog.Int("unknown", c.Unknown),
	)
}

// ExpiredExemption records an exemption that would have applied had it not expired.
type ExpiredExemption struct {
	ID      string
	Expires time.Time
}

// Result is the outcome of evaluating one report against one policy.
type Result struct {
	Pass bool
	// Reason is the one-line explanation for the pull's caller (the denial
	// message kubelet shows) or, when passing, for the audit log.
	Reason string

	Scanner   string // "Trivy 0.58.1"
	CreatedAt time.Time
	Age       time.Duration // zero when CreatedAt is unknown
	Stale     bool          // older than MaxReportAge, undated while a max age is set, or dated in the future

	// Offending are the findings that deny, worst first.
	Offending []Finding
	Counts    Counts // every finding in the report, by reported severity
	Exempted  int    // findings above the threshold admitted by an exemption
	Unfixed   int    // findings skipped by ignore_unfixed
	Expired   []ExpiredExemption

	maxSeverity Severity
	maxAge      time.Duration
	unknownAs   Severity
}

// Evaluate applies opts to report for a pull into namespace at time now.
func Evaluate(report *Report, opts Options, namespace string, now time.Time) Result {
	res := Result{maxSeverity: opts.MaxSeverity, maxAge: opts.MaxReportAge, unknownAs: opts.effective(SeverityUnknown)}
	if report == nil {
		res.Reason = "no vulnerability report"
		return res
	}
	res.Scanner = report.ScannerString()
	res.CreatedAt = report.CreatedAt
	if !report.CreatedAt.IsZero() {
		res.Age = now.Sub(report.CreatedAt)
		switch {
		case res.Age < -ClockSkewTolerance:
			res.Stale = true
		case opts.MaxReportAge > 0 && res.Age > opts.MaxReportAge:
			res.Stale = true
		}
	} else if opts.MaxReportAge > 0 {
		res.Stale = true
	}

	expired := map[string]time.Time{}
	for _, f := range report.Findings {
		res.Counts.add(f.Severity)
		if opts.effective(f.Severity) <= opts.MaxSeverity {
			continue
		}
		if opts.IgnoreUnfixed && f.Fix == FixNotAvailable {
			res.Unfixed++
			continue
		}
		exempt, lapsed := false, time.Time{}
		for _, e := range opts.Allow {
			if !strings.EqualFold(e.ID, f.ID) || !e.appliesTo(namespace) {
				continue
			}
			if e.expiredAt(now) {
				if e.Expires.After(lapsed) {
					lapsed = e.Expires
				}
				continue
			}
			exempt = true
			break
		}
		if exempt {
			res.Exempted++
			continue
		}
		if !lapsed.IsZero() {
			if prev, ok := expired[strings.ToUpper(f.ID)]; !ok || lapsed.After(prev) {
				expired[strings.ToUpper(f.ID)] = lapsed
			}
		}
		res.Offending = append(res.Offending, f)
	}
	for id, t := range expired {
		res.Expired = append(res.Expired, ExpiredExemption{ID: id, Expires: t})
	}
	slices.SortFunc(res.Expired, func(a, b ExpiredExemption) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortStableFunc(res.Offending, func(a, b Finding) int {
		ea, eb := opts.effective(a.Severity), opts.effective(b.Severity)
		if c := cmp.Compare(eb, ea); c != 0 {
			return c
		}
		// Among equals, explicitly rated before unknown-rated, then by id.
		if c := cmp.Compare(rank(a.Severity), rank(b.Severity)); c != 0 {
			return c
		}
		if c := cmp.Compare(a.ID, b.ID); c != 0 {
			return c
		}
		return cmp.Compare(a.Package, b.Package)
	})
	res.Pass = !res.Stale && len(res.Offending) == 0
	res.Reason = res.Message(DefaultMessageFindings)
	return res
}

// LogValue is the audit-log form of a result: the verdict inputs and full
// counts, with offending ids bounded like the message.
func (r Result) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.Bool("pass", r.Pass),
		slog.String("scanner", r.Scanner),
		slog.Bool("stale", r.Stale),
		slog.Int("offending", len(r.Offending)),
		slog.Int("exempted", r.Exempted),
		slog.Int("unfixed_ignored", r.Unfixed),
		slog.Any("counts", r.Counts),
	}
	if !r.CreatedAt.IsZero() {
		attrs = append(attrs, slog.Time("report_created", r.CreatedAt), slog.Duration("report_age", r.Age))
	}
	if len(r.Offending) > 0 {
		ids := make([]string, 0, DefaultMessageFindings)
		for i, f := range r.Offending {
			if i == DefaultMessageFindings {
				break
			}
			ids = append(ids, f.ID)
		}
		attrs = append(attrs, slog.Any("worst", ids))
	}
	if len(r.Expired) > 0 {
		ids := make([]string, 0, len(r.Expired))
		for _, e := range r.Expired {
			ids = append(ids, e.ID)
		}
		attrs = append(attrs, slog.Any("expired_exemptions", ids))
	}
	return slog.GroupValue(attrs...)
}
