package va

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Media types under which scan reports are attached to images. They are used
// both as the referrer's artifactType (or its config media type, which the
// referrers API reports when artifactType is unset) and as layer media types.
const (
	// IANA-registered SARIF type; what trivy's referrer plugin and
	// `oras attach ... report.sarif:application/sarif+json` use.
	MediaTypeSARIF = "application/sarif+json"
	// Artifact type used in Ratify's documentation for Trivy SARIF reports
	// (seen both with and without the "application/" prefix).
	MediaTypeTrivySARIF     = "application/vnd.aquasecurity.trivy.report.sarif.v1"
	mediaTypeTrivySARIFBare = "vnd.aquasecurity.trivy.report.sarif.v1"
	// Trivy JSON report as an OCI artifact.
	MediaTypeTrivyJSON = "application/vnd.aquasecurity.trivy.report+json"
	// Plain JSON: trivy's referrer plugin attaches cosign-vuln predicates so.
	// Content is sniffed.
	MediaTypeJSON = "application/json"
	// CycloneDX; accepted only when the document has a vulnerabilities array.
	MediaTypeCycloneDX = "application/vnd.cyclonedx+json"
	// grype's own JSON report (`grype -o json`). grype registers no media
	// type for it; this is the vendor-tree name it is attached under, after
	// syft's application/vnd.anchore.syft+json. Attached as plain
	// application/json it is recognised by its content (matches and
	// descriptor at the top, descriptor.name "grype"). No other spelling is
	// guessed at: an artifact type nobody agreed on is not a report.
	MediaTypeGrypeJSON = "application/vnd.anchore.grype+json"
)

// ReportMediaTypes lists the artifact types a referrers query should ask for.
func ReportMediaTypes() []string {
	return []string{MediaTypeSARIF, MediaTypeTrivySARIF, mediaTypeTrivySARIFBare, MediaTypeTrivyJSON, MediaTypeJSON, MediaTypeCycloneDX, MediaTypeGrypeJSON}
}

// IsReportMediaType reports whether an artifact of this type may hold a scan report.
func IsReportMediaType(mediaType string) bool {
	_, ok := formatForMediaType(mediaType)
	return ok
}

// ErrUnknownFormat is returned when content matches no supported report format.
var ErrUnknownFormat = errors.New("not a supported vulnerability report format")

// ErrNotVulnerabilityReport is returned for documents of a supported format
// that are not vulnerability reports at all (a CycloneDX SBOM). A source
// skips such artifacts instead of treating them as broken reports.
var ErrNotVulnerabilityReport = errors.New("not a vulnerability report")

// formatForMediaType returns the format a media type names; "" with ok true
// means "JSON, sniff the content".
func formatForMediaType(mediaType string) (Format, bool) {
	mt := strings.ToLower(strings.TrimSpace(mediaType))
	if i := strings.IndexByte(mt, ';'); i >= 0 { // parameters such as charset
		mt = strings.TrimSpace(mt[:i])
	}
	switch mt {
	case MediaTypeSARIF, MediaTypeTrivySARIF, mediaTypeTrivySARIFBare:
		return FormatSARIF, true
	case MediaTypeTrivyJSON:
		return FormatTrivyJSON, true
	case MediaTypeCycloneDX:
		return FormatCycloneDX, true
	case MediaTypeGrypeJSON:
		return FormatGrypeJSON, true
	case MediaTypeJSON:
		return "", true
	}
	return "", false
}

// ParseReport parses report content attached under mediaType. Generic JSON
// is sniffed: a SARIF log, a Trivy report (bare or in a cosign vulnerability
// predicate), a CycloneDX document with vulnerabilities or a grype report. The caller bounds
// len(data); any error means the report cannot be trusted to say anything.
func ParseReport(mediaType string, data []byte) (*Report, error) {
	format, ok := formatForMediaType(mediaType)
	if !ok {
		return nil, fmt.Errorf("media type %q: %w", clean(mediaType, 128), ErrUnknownFormat)
	}
	if format == "" {
		var err error
		if format, err = SniffFormat(data); err != nil {
			return nil, err
		}
	}
	switch format {
	case FormatSARIF:
		return ParseSARIF(data)
	case FormatTrivyJSON:
		return ParseTrivyJSON(data)
	case FormatCycloneDX:
		return ParseCycloneDX(data)
	case FormatGrypeJSON:
		return ParseGrypeJSON(data)
	}
	return nil, ErrUnknownFormat
}

// SniffFormat recognises a report by its top-level JSON keys.
func SniffFormat(data []byte) (Format, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return "", fmt.Errorf("sniff report format: %w", err)
	}
	has := func(k string) bool { _, ok := top[k]; return ok }
	switch {
	case has("runs") && (has("version") || has("$schema")):
		return FormatSARIF, nil
	case has("SchemaVersion"):
		return FormatTrivyJSON, nil
	case has("scanner") && has("invocation"), has("scanner") && has("metadata"):
		return FormatTrivyJSON, nil // cosign vulnerability predicate
	case has("bomFormat"):
		return FormatCycloneDX, nil
	case has("matches") && has("descriptor"):
		return FormatGrypeJSON, nil
	}
	return "", ErrUnknownFormat
}
