package va

import (
	"fmt"
	"strings"
	"time"
)

// Message explains the result in one line, naming at most limit offending
// findings (worst first) and how many more there are. Used for Reason with
// DefaultMessageFindings; callers wanting a longer audit text may ask for more.
func (r *Result) Message(limit int) string {
	if r.Scanner == "" {
		return "no vulnerability report"
	}
	var b strings.Builder
	b.WriteString("vulnerability report (")
	b.WriteString(r.Scanner)
	if !r.CreatedAt.IsZero() {
		if r.Age >= 0 {
			fmt.Fprintf(&b, ", %s old", formatAge(r.Age))
		} else {
			fmt.Fprintf(&b, ", dated %s in the future", formatAge(-r.Age))
		}
	} else {
		b.WriteString(", undated")
	}
	b.WriteString(")")

	var parts []string
	if r.Stale {
		switch {
		case r.CreatedAt.IsZero():
			parts = append(parts, fmt.Sprintf("has no creation time to check against max_report_age %s", formatAge(r.maxAge)))
		case r.Age < 0:
			parts = append(parts, "is dated in the future")
		default:
			parts = append(parts, fmt.Sprintf("is stale: older than max_report_age %s", formatAge(r.maxAge)))
		}
	}
	if n := len(r.Offending); n > 0 {
		var list []string
		for i, f := range r.Offending {
			if i == limit {
				list = append(list, fmt.Sprintf("and %d more", n-limit))
				break
			}
			list = append(list, r.describe(f))
		}
		parts = append(parts, fmt.Sprintf("has %s above max_severity %s: %s", plural(n, "finding"), r.maxSeverity, strings.Join(list, ", ")))
	}
	for i, e := range r.Expired {
		if i == limit {
			parts = append(parts, fmt.Sprintf("and %d more expired exemptions", len(r.Expired)-limit))
			break
		}
		parts = append(parts, fmt.Sprintf("%s exemption expired %s", e.ID, e.Expires.UTC().Format(time.DateOnly)))
	}
	if r.Pass {
		parts = append(parts, fmt.Sprintf("passes max_severity %s: %s, %d exempted, %d unfixed ignored",
			r.maxSeverity, plural(r.Counts.Total(), "finding"), r.Exempted, r.Unfixed))
	}
	return b.String() + " " + strings.Join(parts, "; ")
}

func (r *Result) describe(f Finding) string {
	sev := f.Severity.String()
	if f.Severity == SeverityUnknown {
		sev = "unknown, counted as " + r.unknownAs.String()
	}
	pkg := f.Package
	if pkg != "" && f.InstalledVersion != "" {
		pkg += " " + f.InstalledVersion
	}
	if pkg == "" {
		return fmt.Sprintf("%s (%s)", f.ID, sev)
	}
	return fmt.Sprintf("%s (%s, %s)", f.ID, sev, pkg)
}

// formatAge renders a duration coarsely for humans: 9d3h, 2h13m, 45s.
func formatAge(d time.Duration) string {
	switch {
	case d >= 24*time.Hour:
		days := d / (24 * time.Hour)
		hours := (d % (24 * time.Hour)) / time.Hour
		if hours == 0 {
			return fmt.Sprintf("%dd", days)
		}
		return fmt.Sprintf("%dd%dh", days, hours)
	case d >= time.Hour:
		if m := (d % time.Hour) / time.Minute; m != 0 {
			return fmt.Sprintf("%dh%dm", d/time.Hour, m)
		}
		return fmt.Sprintf("%dh", d/time.Hour)
	case d >= time.Minute:
		return fmt.Sprintf("%dm", d/time.Minute)
	default:
		return fmt.Sprintf("%ds", d/time.Second)
	}
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
