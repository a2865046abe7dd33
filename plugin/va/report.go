package va

import (
	"time"
)

// Format names a report encoding this package can parse.
type Format string

const (
	FormatSARIF     Format = "sarif"
	FormatTrivyJSON Format = "trivy-json"
	FormatCycloneDX Format = "cyclonedx"
	FormatGrypeJSON Format = "grype-json"
)

// FixState says what a report told us about a fix. It is three-valued because
// "the report does not say" must not be confused with "no fix exists":
// ignore_unfixed only skips findings whose report positively says unfixed.
type FixState int

const (
	FixUnknown FixState = iota // the format or the report did not carry fix information
	FixAvailable
	FixNotAvailable
)

// Finding is one vulnerability in one package.
type Finding struct {
	ID               string // CVE-2024-1234, GHSA-..., as the scanner named it
	Severity         Severity
	Package          string
	InstalledVersion string
	FixedVersion     string // empty unless Fix == FixAvailable
	Fix              FixState
}

// Report is a scan report normalised from any supported format.
type Report struct {
	Format         Format
	Scanner        string // e.g. "Trivy", "grype"
	ScannerVersion string
	// CreatedAt is when the scan ran according to the report content itself;
	// zero when the format or the report does not say.
	CreatedAt time.Time
	Findings  []Finding
}

// ScannerString is the scanner name and version for messages, e.g. "Trivy 0.58.1".
func (r *Report) ScannerString() string {
	switch {
	case r == nil || r.Scanner == "":
		return "unknown scanner"
	case r.ScannerVersion == "":
		return r.Scanner
	default:
		return r.Scanner + " " + r.ScannerVersion
	}
}
