package va

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// grype's own JSON document (`grype -o json`): matches[] pair a
// vulnerability with the artifact (package) it was found in; descriptor
// names the scanner and the scan time. Fields pullguard does not read
// (matchDetails, cvss vectors, source.target, distro, db) are left out.
type grypeDocument struct {
	Matches    *[]grypeMatch `json:"matches"` // nil: absent or null
	Descriptor struct {
		Name      string `json:"name"`
		Version   string `json:"version"`
		Timestamp string `json:"timestamp"`
	} `json:"descriptor"`
}

type grypeMatch struct {
	Vulnerability          grypeVuln   `json:"vulnerability"`
	RelatedVulnerabilities []grypeVuln `json:"relatedVulnerabilities"`
	Artifact               struct {
		Name    string `json:"name"`
		Version string `json:"version"`
		Type    string `json:"type"`
		PURL    string `json:"purl"`
	} `json:"artifact"`
}

type grypeVuln struct {
	ID       string `json:"id"`
	Severity string `json:"severity"`
	CVSS     []struct {
		Metrics struct {
			BaseScore *float64 `json:"baseScore"`
		} `json:"metrics"`
	} `json:"cvss"`
	Fix struct {
		Versions []string `json:"versions"`
		State    string   `json:"state"`
	} `json:"fix"`
}

// maxGrypeFixVersions bounds how many fixed versions are joined into one
// finding; the joined string is bounded again by maxVersionLen.
const maxGrypeFixVersions = 8

// ParseGrypeJSON parses grype's JSON report. ignoredMatches (what grype's own
// ignore rules and VEX statements set aside) are not findings, as grype
// itself does not count them. The caller bounds len(data).
func ParseGrypeJSON(data []byte) (*Report, error) {
	var doc grypeDocument
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parse grype JSON: %w", err)
	}
	if !strings.EqualFold(strings.TrimSpace(doc.Descriptor.Name), "grype") {
		return nil, fmt.Errorf("parse grype JSON: descriptor name %q, want grype", clean(doc.Descriptor.Name, 32))
	}
	// grype always writes the array, empty for a clean image: without it
	// the document says nothing about the image and must not pass as clean.
	if doc.Matches == nil {
		return nil, fmt.Errorf("parse grype JSON: no matches array")
	}
	rep := &Report{
		Format:         FormatGrypeJSON,
		Scanner:        "grype",
		ScannerVersion: clean(doc.Descriptor.Version, maxNameLen),
	}
	if ts := doc.Descriptor.Timestamp; ts != "" {
		t, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			return nil, fmt.Errorf("parse grype JSON: descriptor timestamp %q: %w", clean(ts, 64), err)
		}
		rep.CreatedAt = t
	}
	for i, m := range *doc.Matches {
		v := m.Vulnerability
		f := Finding{
			ID:               clean(v.ID, maxIDLen),
			Severity:         grypeSeverity(m),
			Package:          clean(m.Artifact.Name, maxPackageLen),
			InstalledVersion: clean(m.Artifact.Version, maxVersionLen),
		}
		if f.ID == "" {
			return nil, fmt.Errorf("parse grype JSON: matches[%d]: no vulnerability id", i)
		}
		f.Fix, f.FixedVersion = grypeFix(v)
		rep.Findings = append(rep.Findings, f)
	}
	rep.Findings = dedupe(rep.Findings)
	return rep, nil
}

// grypeFix reads fix.versions and fix.state. Listed versions mean a fix
// exists whatever the state says; "not-fixed" and "wont-fix" mean none will
// come (what ignore_unfixed skips). A "fixed" state naming no version, or
// "unknown", is FixUnknown: ignore_unfixed never skips on a guess.
func grypeFix(v grypeVuln) (FixState, string) {
	var versions []string
	for _, s := range v.Fix.Versions {
		if s = clean(s, maxVersionLen); s != "" && len(versions) < maxGrypeFixVersions {
			versions = append(versions, s)
		}
	}
	if fixed := clean(strings.Join(versions, ", "), maxVersionLen); fixed != "" {
		return FixAvailable, fixed
	}
	switch strings.ToLower(strings.TrimSpace(v.Fix.State)) {
	case "not-fixed", "wont-fix":
		return FixNotAvailable, ""
	}
	return FixUnknown, ""
}

// grypeSeverity is the match's own severity: the assessment of the data
// source grype matched against (a distribution's tracker rates a flaw for
// its own build, which may well differ from NVD's rating). Only when that
// is unknown do the related records (usually NVD's) speak, their worst
// label, then the worst CVSS base score of any of them.
func grypeSeverity(m grypeMatch) Severity {
	if s, ok := severityFromLabel(m.Vulnerability.Severity); ok && s != SeverityUnknown {
		return s
	}
	best, found := SeverityUnknown, false
	for _, r := range m.RelatedVulnerabilities {
		if s, ok := severityFromLabel(r.Severity); ok && s != SeverityUnknown && (!found || s > best) {
			best, found = s, true
		}
	}
	if found {
		return best
	}
	all := append([]grypeVuln{m.Vulnerability}, m.RelatedVulnerabilities...)
	for _, v := range all {
		for _, c := range v.CVSS {
			if c.Metrics.BaseScore == nil || *c.Metrics.BaseScore <= 0 {
				continue
			}
			if s := severityFromScore(*c.Metrics.BaseScore); s != SeverityUnknown && (!found || s > best) {
				best, found = s, true
			}
		}
	}
	return best
}
