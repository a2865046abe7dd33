package va

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// SARIF 2.1.0, reduced to what Trivy and Grype put there about vulnerabilities.
//
// How the two scanners encode a vulnerability (read from their writers):
//
//   - Trivy: one rule per vulnerability id (rule.id = "CVE-..."), one result
//     per affected package. rule.help.text and result.message.text carry
//     "Severity: HIGH", "Package: x", "Fixed Version: y" lines (the message
//     also "Installed Version: z"); rule.properties.tags holds the severity
//     word; rule.properties["security-severity"] is the CVSS v3 score, or a
//     score derived from the severity ("0.0" for UNKNOWN). Misconfiguration,
//     secret and license results share the format and are told apart by the
//     rule name / tags.
//   - Grype: one rule per vulnerability and package (rule.id = "CVE-...-pkg");
//     rule.help.text carries "Vulnerability CVE-...", "Severity: high",
//     "Package: x", "Version: z", "Fix Version: y";
//     rule.properties["security-severity"] is the best CVSS base score, or
//     derived from the severity, "0.0" when nothing was known.
//
// The severity word is preferred over the score: it is what the scanner
// itself calls the severity, and what its JSON output of the same scan says,
// so a policy gives the same verdict whatever format the scan was attached in.
// A score of 0.0 is read as unknown, because both scanners write it when they
// know nothing.

type sarifLog struct {
	Version string     `json:"version"`
	Runs    []sarifRun `json:"runs"`
}

type sarifRun struct {
	Tool struct {
		Driver struct {
			Name            string      `json:"name"`
			Version         string      `json:"version"`
			SemanticVersion string      `json:"semanticVersion"`
			Rules           []sarifRule `json:"rules"`
		} `json:"driver"`
	} `json:"tool"`
	// A pointer so that an absent or null array (the tool did not run to
	// completion, per SARIF §3.14.23) is distinguishable from [].
	Results     *[]sarifResult `json:"results"`
	Invocations []struct {
		StartTimeUTC string `json:"startTimeUtc"`
		EndTimeUTC   string `json:"endTimeUtc"`
	} `json:"invocations"`
}

type sarifMessage struct {
	Text string `json:"text"`
}

type sarifProperties struct {
	SecuritySeverity json.RawMessage `json:"security-severity"`
	Tags             []string        `json:"tags"`
}

type sarifRule struct {
	ID         string          `json:"id"`
	Name       string          `json:"name"`
	Help       sarifMessage    `json:"help"`
	Properties sarifProperties `json:"properties"`
}

type sarifResult struct {
	RuleID    string `json:"ruleId"`
	RuleIndex *int   `json:"ruleIndex"`
	Rule      struct {
		ID    string `json:"id"`
		Index *int   `json:"index"`
	} `json:"rule"`
	Kind       string          `json:"kind"`
	Message    sarifMessage    `json:"message"`
	Properties sarifProperties `json:"properties"`
}

// ParseSARIF parses a SARIF 2.1.0 log as written by Trivy or Grype. Every run
// must carry a results array (possibly empty). The caller bounds len(data).
func ParseSARIF(data []byte) (*Report, error) {
	var log sarifLog
	if err := json.Unmarshal(data, &log); err != nil {
		return nil, fmt.Errorf("parse SARIF: %w", err)
	}
	if log.Version != "2.1.0" {
		return nil, fmt.Errorf("parse SARIF: version %q, want 2.1.0", clean(log.Version, 32))
	}
	if len(log.Runs) == 0 {
		return nil, errors.New("parse SARIF: no runs")
	}
	rep := &Report{Format: FormatSARIF}
	for i := range log.Runs {
		if err := addSARIFRun(rep, &log.Runs[i]); err != nil {
			return nil, fmt.Errorf("parse SARIF run %d: %w", i, err)
		}
	}
	rep.Findings = dedupe(rep.Findings)
	return rep, nil
}

func addSARIFRun(rep *Report, run *sarifRun) error {
	driver := &run.Tool.Driver
	if rep.Scanner == "" {
		rep.Scanner = clean(driver.Name, maxNameLen)
		rep.ScannerVersion = clean(driver.Version, maxNameLen)
		if rep.ScannerVersion == "" {
			rep.ScannerVersion = clean(driver.SemanticVersion, maxNameLen)
		}
	}
	for _, inv := range run.Invocations {
		for _, ts := range []string{inv.EndTimeUTC, inv.StartTimeUTC} {
			if ts == "" {
				continue
			}
			t, err := time.Parse(time.RFC3339Nano, ts)
			if err != nil {
				return fmt.Errorf("invocation time %q: %w", clean(ts, 64), err)
			}
			if t.After(rep.CreatedAt) {
				rep.CreatedAt = t
			}
			break
		}
	}

	if run.Results == nil {
		return errors.New("no results array (the scan did not complete)")
	}
	results := *run.Results

	ruleByID := make(map[string]*sarifRule, len(driver.Rules))
	for i := range driver.Rules {
		r := &driver.Rules[i]
		if _, dup := ruleByID[r.ID]; !dup {
			ruleByID[r.ID] = r
		}
	}
	for i := range results {
		res := &results[i]
		rule := lookupRule(res, driver.Rules, ruleByID)
		f, ok, err := sarifFinding(res, rule)
		if err != nil {
			return fmt.Errorf("result %d: %w", i, err)
		}
		if ok {
			rep.Findings = append(rep.Findings, f)
		}
	}
	return nil
}

// lookupRule resolves a result's rule: by index when valid (SARIF §3.27.6),
// else by id. A result may legitimately have no rule.
func lookupRule(res *sarifResult, rules []sarifRule, byID map[string]*sarifRule) *sarifRule {
	for _, idx := range []*int{res.RuleIndex, res.Rule.Index} {
		if idx != nil && *idx >= 0 && *idx < len(rules) {
			return &rules[*idx]
		}
	}
	for _, id := range []string{res.RuleID, res.Rule.ID} {
		if r, ok := byID[id]; ok && id != "" {
			return r
		}
	}
	return nil
}

// Trivy's rule names / tags for findings that are not package vulnerabilities.
var sarifNonVulnerability = map[string]bool{
	"misconfiguration": true,
	"secret":           true,
	"license":          true,
}

func sarifFinding(res *sarifResult, rule *sarifRule) (Finding, bool, error) {
	switch res.Kind {
	case "pass", "notApplicable":
		return Finding{}, false, nil
	}
	if rule == nil {
		rule = &sarifRule{}
	}
	if sarifNonVulnerability[strings.ToLower(rule.Name)] {
		return Finding{}, false, nil
	}
	for _, tag := range rule.Properties.Tags {
		if sarifNonVulnerability[strings.ToLower(tag)] {
			return Finding{}, false, nil
		}
	}

	msg := parseTextFields(res.Message.Text)
	help := parseTextFields(rule.Help.Text)
	first := func(keys ...string) (string, bool) {
		for _, fields := range []textFields{msg, help} {
			for _, k := range keys {
				if v, ok := fields.get(k); ok {
					return v, true
				}
			}
		}
		return "", false
	}

	var f Finding
	id, _ := first("Vulnerability")
	if id == "" {
		id = firstNonEmpty(res.RuleID, res.Rule.ID, rule.ID)
		// Trivy's old SARIF template names rules "[HIGH] CVE-...".
		if strings.HasPrefix(id, "[") {
			if _, rest, ok := strings.Cut(id, "]"); ok {
				id = rest
			}
		}
	}
	f.ID = clean(id, maxIDLen)
	if f.ID == "" {
		return Finding{}, false, errors.New("no rule id")
	}
	pkg, _ := first("Package")
	f.Package = clean(pkg, maxPackageLen)
	installed, _ := first("Installed Version", "Version")
	f.InstalledVersion = clean(installed, maxVersionLen)
	if fixed, ok := first("Fixed Version", "Fix Version"); ok {
		f.FixedVersion = clean(fixed, maxVersionLen)
		f.Fix = FixNotAvailable
		if f.FixedVersion != "" {
			f.Fix = FixAvailable
		}
	}

	f.Severity = SeverityUnknown
	label, ok := first("Severity")
	sev, known := severityFromLabel(label)
	if !ok || !known || sev == SeverityUnknown {
		sev, known = severityFromTags(rule.Properties.Tags)
	}
	if known && sev != SeverityUnknown {
		f.Severity = sev
	} else {
		for _, raw := range []json.RawMessage{res.Properties.SecuritySeverity, rule.Properties.SecuritySeverity} {
			score, ok := parseScore(raw)
			if ok && score > 0 {
				f.Severity = severityFromScore(score)
				break
			}
		}
	}
	return f, true, nil
}

// severityFromTags finds a severity word among rule tags (Trivy writes it
// upper-case next to "vulnerability" and "security").
func severityFromTags(tags []string) (Severity, bool) {
	for _, t := range tags {
		if t == "" {
			continue
		}
		switch strings.ToLower(t) {
		case "critical", "high", "medium", "low":
			return severityFromLabel(t)
		}
	}
	return SeverityUnknown, false
}

// parseScore accepts security-severity as a JSON string ("7.5", GitHub's
// documented form) or number.
func parseScore(raw json.RawMessage) (float64, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return 0, false
	}
	var s string
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, false
		}
	} else {
		s = string(raw)
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(v) || v < 0 || v > 10 {
		return 0, false
	}
	return v, true
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
