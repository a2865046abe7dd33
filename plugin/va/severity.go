package va

import (
	"fmt"
	"math"
	"strings"
)

// Severity is a normalised vulnerability severity. The zero value is
// SeverityUnknown so that a finding whose severity was never set is treated
// as unknown (and therefore, by default, as the worst) rather than as harmless.
type Severity int

const (
	SeverityUnknown Severity = iota
	SeverityNone
	SeverityLow
	SeverityMedium
	SeverityHigh
	SeverityCritical
)

var severityNames = [...]string{
	SeverityUnknown:  "unknown",
	SeverityNone:     "none",
	SeverityLow:      "low",
	SeverityMedium:   "medium",
	SeverityHigh:     "high",
	SeverityCritical: "critical",
}

func (s Severity) String() string {
	if s < 0 || int(s) >= len(severityNames) {
		return fmt.Sprintf("severity(%d)", int(s))
	}
	return severityNames[s]
}

// ParseSeverity parses a policy threshold as written in configuration:
// none, low, medium, high or critical (case-insensitive). "unknown" is
// rejected because it is not an ordered level a threshold can be set to.
func ParseSeverity(s string) (Severity, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "none":
		return SeverityNone, nil
	case "low":
		return SeverityLow, nil
	case "medium":
		return SeverityMedium, nil
	case "high":
		return SeverityHigh, nil
	case "critical":
		return SeverityCritical, nil
	}
	return SeverityUnknown, fmt.Errorf("invalid severity %q (want none, low, medium, high or critical)", s)
}

// severityFromLabel maps the severity words scanners write into a Severity.
// Vendor vocabularies are folded in (Red Hat "moderate"/"important", Grype
// "negligible", Debian "unimportant") because scanners pass those through.
// ok is false when the word is not recognised at all; an explicit "unknown"
// is recognised and yields SeverityUnknown.
func severityFromLabel(label string) (sev Severity, ok bool) {
	switch strings.ToLower(strings.TrimSpace(label)) {
	case "critical":
		return SeverityCritical, true
	case "high", "important":
		return SeverityHigh, true
	case "medium", "moderate":
		return SeverityMedium, true
	// Negligible/unimportant still describe a known weakness: rank them low
	// rather than none so that a max_severity of "none" still catches them.
	case "low", "negligible", "unimportant":
		return SeverityLow, true
	case "none", "info", "informational":
		return SeverityNone, true
	case "unknown", "":
		return SeverityUnknown, label != ""
	}
	return SeverityUnknown, false
}

// severityFromScore maps a CVSS base score using the CVSS v3 qualitative
// rating scale. Scores outside [0,10] are not scores: unknown.
func severityFromScore(score float64) Severity {
	switch {
	case math.IsNaN(score) || score < 0 || score > 10:
		return SeverityUnknown
	case score == 0:
		return SeverityNone
	case score < 4:
		return SeverityLow
	case score < 7:
		return SeverityMedium
	case score < 9:
		return SeverityHigh
	default:
		return SeverityCritical
	}
}
