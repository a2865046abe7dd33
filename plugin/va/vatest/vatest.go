// Package vatest writes scan reports shaped like the ones Trivy and Grype
// produce, for tests of pullguard's vulnerability assessment (parsers, the
// referrers source, and end-to-end tests that attach reports to images).
// The shapes follow the scanners' writers field by field for what pullguard
// reads; descriptive fields they also write are filled with plausible text.
package vatest

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Vuln is one vulnerable package, in the scanner's own vocabulary.
type Vuln struct {
	ID        string  // CVE-2024-0001
	Severity  string  // scanner word: Trivy "HIGH", Grype "high"; "" for unknown
	Score     float64 // CVSS base score; 0 = none known
	Package   string
	Installed string
	Fixed     string // "" = no fix
}

// Scan describes one scan run.
type Scan struct {
	ScannerVersion string
	Created        time.Time // zero: the report does not say
	Image          string    // e.g. "127.0.0.1:5000/app@sha256:..."
	Vulns          []Vuln
}

func mustJSON(v any) []byte {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		panic(err) // only plain maps and slices are marshalled here
	}
	return b
}

func trivyScore(v Vuln) string {
	if v.Score > 0 {
		return fmt.Sprintf("%.1f", v.Score)
	}
	switch strings.ToUpper(v.Severity) {
	case "CRITICAL":
		return "9.5"
	case "HIGH":
		return "8.0"
	case "MEDIUM":
		return "5.5"
	case "LOW":
		return "2.0"
	}
	return "0.0"
}

// TrivySARIF renders the scan the way `trivy image -f sarif` does: one rule
// per vulnerability id, one result per affected package.
func TrivySARIF(s Scan) []byte {
	rules := []any{}
	results := []any{}
	ruleIndex := map[string]int{}
	for _, v := range s.Vulns {
		sev := strings.ToUpper(v.Severity)
		if sev == "" {
			sev = "UNKNOWN"
		}
		link := "https://avd.aquasec.com/nvd/" + strings.ToLower(v.ID)
		idx, ok := ruleIndex[v.ID]
		if !ok {
			idx = len(rules)
			ruleIndex[v.ID] = idx
			rules = append(rules, map[string]any{
				"id":                   v.ID,
				"name":                 "OsPackageVulnerability",
				"shortDescription":     map[string]any{"text": v.Package + ": flaw in " + v.Package},
				"fullDescription":      map[string]any{"text": "A flaw was found in " + v.Package + ". Severity: LOW in some vendor advisories."},
				"defaultConfiguration": map[string]any{"level": sarifLevel(sev)},
				"helpUri":              link,
				"help": map[string]any{
					"text": fmt.Sprintf("Vulnerability %s\nSeverity: %s\nPackage: %s\nFixed Version: %s\nLink: [%s](%s)\nA flaw was found.\nSeverity: LOW",
						v.ID, sev, v.Package, v.Fixed, v.ID, link),
					"markdown": fmt.Sprintf("**Vulnerability %s**\n| Severity | Package | Fixed Version | Link |\n| --- | --- | --- | --- |\n|%s|%s|%s|[%s](%s)|\n\nA flaw was found.",
						v.ID, sev, v.Package, v.Fixed, v.ID, link),
				},
				"properties": map[string]any{
					"precision":         "very-high",
					"security-severity": trivyScore(v),
					"tags":              []string{"vulnerability", "security", sev},
				},
			})
		}
		results = append(results, map[string]any{
			"ruleId":    v.ID,
			"ruleIndex": idx,
			"level":     sarifLevel(sev),
			"message": map[string]any{"text": fmt.Sprintf("Package: %s\nInstalled Version: %s\nVulnerability %s\nSeverity: %s\nFixed Version: %s\nLink: [%s](%s)",
				v.Package, v.Installed, v.ID, sev, v.Fixed, v.ID, link)},
			"locations": []any{map[string]any{
				"physicalLocation": map[string]any{
					"artifactLocation": map[string]any{"uri": "library/app", "uriBaseId": "ROOTPATH"},
					"region":           map[string]any{"startLine": 1, "startColumn": 1, "endLine": 1, "endColumn": 1},
				},
				"message": map[string]any{"text": "library/app: " + v.Package + "@" + v.Installed},
			}},
		})
	}
	run := map[string]any{
		"tool": map[string]any{"driver": map[string]any{
			"fullName":       "Trivy Vulnerability Scanner",
			"informationUri": "https://github.com/aquasecurity/trivy",
			"name":           "Trivy",
			"rules":          rules,
			"version":        s.ScannerVersion,
		}},
		"results":            results,
		"columnKind":         "utf16CodeUnits",
		"originalUriBaseIds": map[string]any{"ROOTPATH": map[string]any{"uri": "file:///"}},
		"properties": map[string]any{
			"imageName":   s.Image,
			"repoDigests": []string{s.Image},
		},
	}
	if !s.Created.IsZero() {
		run["invocations"] = []any{map[string]any{"executionSuccessful": true, "endTimeUtc": s.Created.UTC().Format(time.RFC3339)}}
	}
	return mustJSON(map[string]any{
		"version": "2.1.0",
		"$schema": "https://raw.githubusercontent.com/oasis-tcs/sarif-spec/main/sarif-2.1/schema/sarif-schema-2.1.0.json",
		"runs":    []any{run},
	})
}

func sarifLevel(trivySev string) string {
	switch trivySev {
	case "CRITICAL", "HIGH":
		return "error"
	case "MEDIUM":
		return "warning"
	case "LOW", "UNKNOWN":
		return "note"
	}
	return "none"
}

// GrypeSARIF renders the scan the way `grype -o sarif` does: one rule per
// vulnerability and package, the details in the rule's help text.
func GrypeSARIF(s Scan) []byte {
	rules := []any{}
	results := []any{}
	for _, v := range s.Vulns {
		sev := strings.ToLower(v.Severity)
		switch sev {
		case "critical", "high", "medium":
		default:
			sev = "low" // grype writes anything else as low
		}
		score := "0.0"
		switch {
		case v.Score > 0:
			score = fmt.Sprintf("%.1f", v.Score)
		case v.Severity != "":
			score = map[string]string{"critical": "9.0", "high": "7.0", "medium": "4.0", "low": "1.0"}[sev]
		}
		ruleID := v.ID + "-" + v.Package
		rules = append(rules, map[string]any{
			"id":               ruleID,
			"name":             "DpkgMatcherExactDirectMatch",
			"shortDescription": map[string]any{"text": fmt.Sprintf("%s %s vulnerability for %s package", v.ID, sev, v.Package)},
			"fullDescription":  map[string]any{"text": "Version " + v.Installed + " is affected."},
			"helpUri":          "https://github.com/anchore/grype",
			"help": map[string]any{
				"text": fmt.Sprintf("Vulnerability %s\nSeverity: %s\nPackage: %s\nVersion: %s\nFix Version: %s\nType: deb\nLocation: /var/lib/dpkg/status\nData Namespace: debian:distro:debian:12\nLink: [%s](https://security-tracker.debian.org/tracker/%s)",
					v.ID, sev, v.Package, v.Installed, v.Fixed, v.ID, v.ID),
				"markdown": fmt.Sprintf("**Vulnerability %s**\n| Severity | Package | Version | Fix Version | Type | Location | Data Namespace | Link |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n| %s  | %s  | %s  | %s  | deb  | /var/lib/dpkg/status  | debian:distro:debian:12  | %s  |\n",
					v.ID, sev, v.Package, v.Installed, v.Fixed, v.ID),
			},
			"properties": map[string]any{"security-severity": score},
		})
		results = append(results, map[string]any{
			"ruleId":  ruleID,
			"message": map[string]any{"text": fmt.Sprintf("A %s vulnerability in deb package: %s, version %s was found in image %s at: /var/lib/dpkg/status", sev, v.Package, v.Installed, s.Image)},
			"locations": []any{map[string]any{
				"physicalLocation": map[string]any{
					"artifactLocation": map[string]any{"uri": "app/var/lib/dpkg/status"},
					"region":           map[string]any{"startLine": 1, "startColumn": 1, "endLine": 1, "endColumn": 1},
				},
			}},
			"partialFingerprints": map[string]any{"primaryLocationLineHash": "0f1e2d3c:1"},
		})
	}
	return mustJSON(map[string]any{
		"version": "2.1.0",
		"$schema": "https://docs.oasis-open.org/sarif/sarif/v2.1.0/cos02/schemas/sarif-schema-2.1.0.json",
		"runs": []any{map[string]any{
			"tool": map[string]any{"driver": map[string]any{
				"name":           "grype",
				"version":        s.ScannerVersion,
				"informationUri": "https://github.com/anchore/grype",
				"rules":          rules,
			}},
			"results": results,
		}},
	})
}

// TrivyJSON renders the scan the way `trivy image -f json` does (schema 2).
func TrivyJSON(s Scan) []byte {
	vulns := []any{}
	for _, v := range s.Vulns {
		sev := strings.ToUpper(v.Severity)
		if sev == "" {
			sev = "UNKNOWN"
		}
		status := "affected"
		if v.Fixed != "" {
			status = "fixed"
		}
		m := map[string]any{
			"VulnerabilityID":  v.ID,
			"PkgID":            v.Package + "@" + v.Installed,
			"PkgName":          v.Package,
			"InstalledVersion": v.Installed,
			"Status":           status,
			"Layer":            map[string]any{"DiffID": "sha256:0000000000000000000000000000000000000000000000000000000000000000"},
			"SeveritySource":   "nvd",
			"PrimaryURL":       "https://avd.aquasec.com/nvd/" + strings.ToLower(v.ID),
			"Title":            v.Package + ": flaw",
			"Severity":         sev,
		}
		if v.Fixed != "" {
			m["FixedVersion"] = v.Fixed
		}
		if v.Score > 0 {
			m["CVSS"] = map[string]any{"nvd": map[string]any{"V3Score": v.Score}}
		}
		vulns = append(vulns, m)
	}
	result := map[string]any{"Target": s.Image + " (debian 12.5)", "Class": "os-pkgs", "Type": "debian"}
	if len(vulns) > 0 {
		result["Vulnerabilities"] = vulns
	}
	rep := map[string]any{
		"SchemaVersion": 2,
		"Trivy":         map[string]any{"Version": s.ScannerVersion},
		"ArtifactName":  s.Image,
		"ArtifactType":  "container_image",
		"Metadata": map[string]any{
			"OS":          map[string]any{"Family": "debian", "Name": "12.5"},
			"RepoDigests": []string{s.Image},
		},
		"Results": []any{result},
	}
	if !s.Created.IsZero() {
		rep["CreatedAt"] = s.Created.UTC().Format(time.RFC3339Nano)
	}
	return mustJSON(rep)
}

// CosignVuln wraps TrivyJSON in the cosign vulnerability predicate written by
// `trivy -f cosign-vuln`.
func CosignVuln(s Scan) []byte {
	inner := json.RawMessage(TrivyJSON(Scan{ScannerVersion: s.ScannerVersion, Image: s.Image, Vulns: s.Vulns}))
	meta := map[string]any{}
	if !s.Created.IsZero() {
		meta["scanStartedOn"] = s.Created.UTC().Add(-time.Minute).Format(time.RFC3339)
		meta["scanFinishedOn"] = s.Created.UTC().Format(time.RFC3339)
	}
	return mustJSON(map[string]any{
		"invocation": map[string]any{"parameters": nil, "uri": "", "event_id": "", "builder.id": ""},
		"scanner": map[string]any{
			"uri":     "pkg:github/aquasecurity/trivy@dev",
			"version": s.ScannerVersion,
			"db":      map[string]any{"uri": "", "version": ""},
			"result":  inner,
		},
		"metadata": meta,
	})
}

// CycloneDX renders the scan as a CycloneDX 1.5 document with vulnerabilities.
func CycloneDX(s Scan) []byte {
	comps := []any{}
	vulns := []any{}
	seen := map[string]bool{}
	for _, v := range s.Vulns {
		ref := "pkg:deb/debian/" + v.Package + "@" + v.Installed
		if !seen[ref] {
			seen[ref] = true
			comps = append(comps, map[string]any{"bom-ref": ref, "type": "library", "name": v.Package, "version": v.Installed, "purl": ref})
		}
		rating := map[string]any{"source": map[string]any{"name": "nvd"}, "method": "CVSSv31"}
		if v.Severity != "" {
			rating["severity"] = strings.ToLower(v.Severity)
		}
		if v.Score > 0 {
			rating["score"] = v.Score
		}
		vulns = append(vulns, map[string]any{
			"id":      v.ID,
			"source":  map[string]any{"name": "debian"},
			"ratings": []any{rating},
			"affects": []any{map[string]any{"ref": ref, "versions": []any{map[string]any{"version": v.Installed, "status": "affected"}}}},
		})
	}
	meta := map[string]any{"tools": map[string]any{"components": []any{map[string]any{"type": "application", "group": "aquasecurity", "name": "trivy", "version": s.ScannerVersion}}}}
	if !s.Created.IsZero() {
		meta["timestamp"] = s.Created.UTC().Format(time.RFC3339)
	}
	return mustJSON(map[string]any{
		"$schema":         "http://cyclonedx.org/schema/bom-1.5.schema.json",
		"bomFormat":       "CycloneDX",
		"specVersion":     "1.5",
		"serialNumber":    "urn:uuid:00000000-0000-4000-8000-000000000000",
		"version":         1,
		"metadata":        meta,
		"components":      comps,
		"vulnerabilities": vulns,
	})
}

// GrypeJSON renders the scan the way `grype -o json` does: one match per
// vulnerability and package, the distribution's record as the match's
// vulnerability and NVD's as its related one, the scan time in the
// descriptor.
func GrypeJSON(s Scan) []byte {
	matches := []any{}
	for _, v := range s.Vulns {
		sev := "Unknown"
		if v.Severity != "" {
			sev = strings.ToUpper(v.Severity[:1]) + strings.ToLower(v.Severity[1:])
		}
		fix := map[string]any{"versions": []string{}, "state": "not-fixed"}
		if v.Fixed != "" {
			fix = map[string]any{"versions": []string{v.Fixed}, "state": "fixed", "available": []any{map[string]any{"version": v.Fixed, "date": "2024-06-01", "kind": "first-observed"}}}
		}
		constraint := "< " + v.Fixed + " (deb)"
		if v.Fixed == "" {
			constraint = "none (deb)"
		}
		nvdCVSS := []any{}
		if v.Score > 0 {
			nvdCVSS = append(nvdCVSS, map[string]any{
				"source":         "nvd@nist.gov",
				"type":           "Primary",
				"version":        "3.1",
				"vector":         "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
				"metrics":        map[string]any{"baseScore": v.Score, "exploitabilityScore": 3.9, "impactScore": 5.9},
				"vendorMetadata": map[string]any{},
			})
		}
		purl := "pkg:deb/debian/" + v.Package + "@" + v.Installed + "?arch=amd64&distro=debian-12"
		matches = append(matches, map[string]any{
			"vulnerability": map[string]any{
				"id":          v.ID,
				"dataSource":  "https://security-tracker.debian.org/tracker/" + v.ID,
				"namespace":   "debian:distro:debian:12",
				"severity":    sev,
				"urls":        []string{},
				"description": "A flaw was found in " + v.Package + ".",
				"cvss":        []any{},
				"fix":         fix,
				"advisories":  []any{},
				"risk":        0.5,
			},
			"relatedVulnerabilities": []any{map[string]any{
				"id":          v.ID,
				"dataSource":  "https://nvd.nist.gov/vuln/detail/" + v.ID,
				"namespace":   "nvd:cpe",
				"severity":    sev,
				"urls":        []string{},
				"description": "A flaw was found in " + v.Package + ".",
				"cvss":        nvdCVSS,
			}},
			"matchDetails": []any{map[string]any{
				"type":    "exact-direct-match",
				"matcher": "dpkg-matcher",
				"searchedBy": map[string]any{
					"distro":    map[string]any{"type": "debian", "version": "12"},
					"namespace": "debian:distro:debian:12",
					"package":   map[string]any{"name": v.Package, "version": v.Installed},
				},
				"found": map[string]any{"versionConstraint": constraint, "vulnerabilityID": v.ID},
			}},
			"artifact": map[string]any{
				"id":        "0123456789abcdef",
				"name":      v.Package,
				"version":   v.Installed,
				"type":      "deb",
				"locations": []any{map[string]any{"path": "/var/lib/dpkg/status", "layerID": "sha256:0000000000000000000000000000000000000000000000000000000000000000"}},
				"language":  "",
				"licenses":  []string{},
				"cpes":      []string{"cpe:2.3:a:" + v.Package + ":" + v.Package + ":" + v.Installed + ":*:*:*:*:*:*:*"},
				"purl":      purl,
				"upstreams": []any{},
			},
		})
	}
	descriptor := map[string]any{
		"name":          "grype",
		"version":       s.ScannerVersion,
		"configuration": map[string]any{"output": []string{"json"}, "only-fixed": false},
		"db": map[string]any{
			"status": map[string]any{"schemaVersion": "v6.0.2", "from": "https://grype.anchore.io/databases/v6/vulnerability-db_v6.0.2.tar.zst", "built": "2026-11-19T04:12:33Z", "path": "/root/.cache/grype/db/6/vulnerability.db", "valid": true},
		},
	}
	if !s.Created.IsZero() {
		descriptor["timestamp"] = s.Created.UTC().Format(time.RFC3339Nano)
	}
	return mustJSON(map[string]any{
		"matches": matches,
		"source": map[string]any{
			"type": "image",
			"target": map[string]any{
				"userInput":      s.Image,
				"imageID":        "sha256:2222222222222222222222222222222222222222222222222222222222222222",
				"manifestDigest": "sha256:3333333333333333333333333333333333333333333333333333333333333333",
				"mediaType":      "application/vnd.oci.image.manifest.v1+json",
				"tags":           []string{},
				"repoDigests":    []string{s.Image},
				"architecture":   "amd64",
				"os":             "linux",
			},
		},
		"distro":     map[string]any{"name": "debian", "version": "12", "idLike": []string{"debian"}},
		"descriptor": descriptor,
	})
}
