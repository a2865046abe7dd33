package va

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// CycloneDX JSON (1.4 to 1.6) with a vulnerabilities array, as written by
// `trivy image -f cyclonedx --scanners vuln` or a VEX producer. A CycloneDX
// SBOM without that array is not a scan and is rejected, so an attached SBOM
// can never pass for a clean report.
type cdxBOM struct {
	BOMFormat string `json:"bomFormat"`
	Metadata  struct {
		Timestamp string          `json:"timestamp"`
		Tools     json.RawMessage `json:"tools"`
	} `json:"metadata"`
	Components      []cdxComponent `json:"components"`
	Vulnerabilities *[]cdxVuln     `json:"vulnerabilities"` // nil: absent or null
}

type cdxComponent struct {
	BOMRef     string         `json:"bom-ref"`
	Name       string         `json:"name"`
	Version    string         `json:"version"`
	Components []cdxComponent `json:"components"`
}

type cdxTool struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

type cdxVuln struct {
	ID      string `json:"id"`
	Ratings []struct {
		Severity string   `json:"severity"`
		Score    *float64 `json:"score"`
	} `json:"ratings"`
	Affects []struct {
		Ref string `json:"ref"`
	} `json:"affects"`
	Analysis struct {
		State string `json:"state"`
	} `json:"analysis"`
}

// CycloneDX analysis states meaning the component is not exploitable as shipped.
var cdxNotAffected = map[string]bool{
	"not_affected":           true,
	"false_positive":         true,
	"resolved":               true,
	"resolved_with_pedigree": true,
}

// cdxMaxDepth bounds component nesting walked when indexing bom-refs.
const cdxMaxDepth = 32

// ParseCycloneDX parses a CycloneDX JSON document's vulnerabilities. CycloneDX
// carries no fixed-version field Trivy or Grype fill in, so findings have
// FixUnknown and ignore_unfixed does not skip them.
func ParseCycloneDX(data []byte) (*Report, error) {
	var bom cdxBOM
	if err := json.Unmarshal(data, &bom); err != nil {
		return nil, fmt.Errorf("parse CycloneDX: %w", err)
	}
	if bom.BOMFormat != "CycloneDX" {
		return nil, fmt.Errorf("parse CycloneDX: bomFormat %q, want CycloneDX", clean(bom.BOMFormat, 32))
	}
	if bom.Vulnerabilities == nil {
		return nil, fmt.Errorf("parse CycloneDX: no vulnerabilities array (an SBOM): %w", ErrNotVulnerabilityReport)
	}
	vulns := *bom.Vulnerabilities

	rep := &Report{Format: FormatCycloneDX}
	if bom.Metadata.Timestamp != "" {
		t, err := time.Parse(time.RFC3339Nano, bom.Metadata.Timestamp)
		if err != nil {
			return nil, fmt.Errorf("parse CycloneDX: timestamp %q: %w", clean(bom.Metadata.Timestamp, 64), err)
		}
		rep.CreatedAt = t
	}
	if tool, ok := cdxFirstTool(bom.Metadata.Tools); ok {
		rep.Scanner, rep.ScannerVersion = clean(tool.Name, maxNameLen), clean(tool.Version, maxNameLen)
	}

	components := map[string]*cdxComponent{}
	var index func(cs []cdxComponent, depth int)
	index = func(cs []cdxComponent, depth int) {
		if depth > cdxMaxDepth {
			return
		}
		for i := range cs {
			if cs[i].BOMRef != "" {
				components[cs[i].BOMRef] = &cs[i]
			}
			index(cs[i].Components, depth+1)
		}
	}
	index(bom.Components, 0)

	for vi, v := range vulns {
		if cdxNotAffected[v.Analysis.State] {
			continue
		}
		id := clean(v.ID, maxIDLen)
		if id == "" {
			return nil, fmt.Errorf("parse CycloneDX: vulnerabilities[%d]: no id", vi)
		}
		sev := cdxSeverity(v)
		refs := make([]string, 0, len(v.Affects))
		for _, a := range v.Affects {
			refs = append(refs, a.Ref)
		}
		if len(refs) == 0 {
			refs = append(refs, "")
		}
		for _, ref := range refs {
			f := Finding{ID: id, Severity: sev, Package: clean(ref, maxPackageLen)}
			if c, ok := components[ref]; ok {
				f.Package = clean(c.Name, maxPackageLen)
				f.InstalledVersion = clean(c.Version, maxVersionLen)
			}
			rep.Findings = append(rep.Findings, f)
		}
	}
	rep.Findings = dedupe(rep.Findings)
	return rep, nil
}

// cdxSeverity takes the worst labelled rating; scores only when no rating
// carries a usable label.
func cdxSeverity(v cdxVuln) Severity {
	best, found := SeverityUnknown, false
	for _, r := range v.Ratings {
		if s, ok := severityFromLabel(r.Severity); ok && s != SeverityUnknown {
			if !found || s > best {
				best, found = s, true
			}
		}
	}
	if found {
		return best
	}
	for _, r := range v.Ratings {
		if r.Score != nil && *r.Score > 0 {
			if s := severityFromScore(*r.Score); s != SeverityUnknown && (!found || s > best) {
				best, found = s, true
			}
		}
	}
	return best
}

// cdxFirstTool reads metadata.tools in either shape: the 1.4 array of tools
// or the 1.5+ object {"components": [...]}.
func cdxFirstTool(raw json.RawMessage) (cdxTool, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return cdxTool{}, false
	}
	var list []cdxTool
	if raw[0] == '[' {
		if json.Unmarshal(raw, &list) != nil {
			return cdxTool{}, false
		}
	} else {
		var obj struct {
			Components []cdxTool `json:"components"`
		}
		if json.Unmarshal(raw, &obj) != nil {
			return cdxTool{}, false
		}
		list = obj.Components
	}
	for _, t := range list {
		if t.Name != "" {
			return t, true
		}
	}
	return cdxTool{}, false
}
