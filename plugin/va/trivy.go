package va

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Trivy JSON report, schema version 2 (what `trivy image -f json` writes
// since v0.20): Results[].Vulnerabilities[] with VulnerabilityID, PkgName,
// InstalledVersion, FixedVersion, Status, Severity. Newer versions add
// Trivy.Version and CreatedAt.
type trivyReport struct {
	SchemaVersion int `json:"SchemaVersion"`
	Trivy         struct {
		Version string `json:"Version"`
	} `json:"Trivy"`
	CreatedAt string        `json:"CreatedAt"`
	Results   []trivyResult `json:"Results"`
}

type trivyResult struct {
	Target          string      `json:"Target"`
	Vulnerabilities []trivyVuln `json:"Vulnerabilities"`
}

type trivyVuln struct {
	VulnerabilityID  string `json:"VulnerabilityID"`
	PkgName          string `json:"PkgName"`
	InstalledVersion string `json:"InstalledVersion"`
	FixedVersion     string `json:"FixedVersion"`
	Status           string `json:"Status"`
	Severity         string `json:"Severity"`
}

// cosignVuln is the cosign vulnerability predicate
// (https://cosign.sigstore.dev/attestation/vuln/v1) that `trivy -f cosign-vuln`
// writes and trivy's referrer plugin attaches as application/json: the Trivy
// report sits in scanner.result.
type cosignVuln struct {
	Scanner *struct {
		URI     string          `json:"uri"`
		Version string          `json:"version"`
		Result  json.RawMessage `json:"result"`
	} `json:"scanner"`
	Metadata struct {
		ScanFinishedOn string `json:"scanFinishedOn"`
		ScanStartedOn  string `json:"scanStartedOn"`
	} `json:"metadata"`
}

// ParseTrivyJSON parses a Trivy JSON report (schema version 2), bare or
// wrapped in a cosign vulnerability predicate. The caller bounds len(data).
func ParseTrivyJSON(data []byte) (*Report, error) {
	var wrapped cosignVuln
	if err := json.Unmarshal(data, &wrapped); err == nil && wrapped.Scanner != nil && len(bytes.TrimSpace(wrapped.Scanner.Result)) > 0 {
		rep, err := parseTrivyReport(wrapped.Scanner.Result)
		if err != nil {
			return nil, fmt.Errorf("parse cosign vulnerability predicate: %w", err)
		}
		if rep.ScannerVersion == "" {
			rep.ScannerVersion = clean(wrapped.Scanner.Version, maxNameLen)
		}
		if rep.CreatedAt.IsZero() {
			for _, ts := range []string{wrapped.Metadata.ScanFinishedOn, wrapped.Metadata.ScanStartedOn} {
				if ts == "" {
					continue
				}
				t, err := time.Parse(time.RFC3339Nano, ts)
				if err != nil {
					return nil, fmt.Errorf("parse cosign vulnerability predicate: scan time %q: %w", clean(ts, 64), err)
				}
				rep.CreatedAt = t
				break
			}
		}
		return rep, nil
	}
	return parseTrivyReport(data)
}

func parseTrivyReport(data []byte) (*Report, error) {
	var tr trivyReport
	if err := json.Unmarshal(data, &tr); err != nil {
		return nil, fmt.Errorf("parse Trivy JSON: %w", err)
	}
	if tr.SchemaVersion != 2 {
		if tr.SchemaVersion == 0 {
			return nil, errors.New("parse Trivy JSON: no SchemaVersion (not a Trivy report)")
		}
		return nil, fmt.Errorf("parse Trivy JSON: SchemaVersion %d, want 2", tr.SchemaVersion)
	}
	rep := &Report{
		Format:         FormatTrivyJSON,
		Scanner:        "Trivy",
		ScannerVersion: clean(tr.Trivy.Version, maxNameLen),
	}
	if tr.CreatedAt != "" {
		t, err := time.Parse(time.RFC3339Nano, tr.CreatedAt)
		if err != nil {
			return nil, fmt.Errorf("parse Trivy JSON: CreatedAt %q: %w", clean(tr.CreatedAt, 64), err)
		}
		rep.CreatedAt = t
	}
	for ri, res := range tr.Results {
		for vi, v := range res.Vulnerabilities {
			// VEX-filtered statements Trivy still prints: the scanner itself says
			// the package is not affected.
			if v.Status == "not_affected" {
				continue
			}
			f := Finding{
				ID:               clean(v.VulnerabilityID, maxIDLen),
				Package:          clean(v.PkgName, maxPackageLen),
				InstalledVersion: clean(v.InstalledVersion, maxVersionLen),
				FixedVersion:     clean(v.FixedVersion, maxVersionLen),
				Fix:              FixNotAvailable,
			}
			if f.ID == "" {
				return nil, fmt.Errorf("parse Trivy JSON: Results[%d].Vulnerabilities[%d]: no VulnerabilityID", ri, vi)
			}
			if f.FixedVersion != "" {
				f.Fix = FixAvailable
			}
			f.Severity, _ = severityFromLabel(v.Severity)
			rep.Findings = append(rep.Findings, f)
		}
	}
	rep.Findings = dedupe(rep.Findings)
	return rep, nil
}
