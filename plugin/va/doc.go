// Package va is pullguard's vulnerability assessment (SPEC §4): it finds the
// scan report for an image, parses it, and judges it against the va policy.
//
// The pieces, in the order a decision uses them:
//
//	Source.Report(ctx, Query) -> *Attested      find the newest trustworthy report
//	Evaluate(report, Options, ns, now) -> Result  apply max_severity, ignore_unfixed,
//	                                             allow-list, max_report_age
//	Result.Reason / Result.Message(n)           the denial text kubelet shows
//
// # Reports
//
// Reports are untrusted input. ParseReport (and ParseSARIF, ParseTrivyJSON,
// ParseCycloneDX, ParseGrypeJSON) never panic, copy only bounded, control-character-free
// strings out of the input, and return an error for anything malformed; the
// caller denies on error. The caller bounds the input size. Every report
// normalises to Report: scanner name and version, the scan time when the
// report carries one, and Findings with a Severity (unknown when the report
// gives no usable severity; Options.UnknownSeverity decides what that counts
// as, critical by default) and a three-valued FixState.
//
// Supported encodings, as attached to images:
//   - SARIF 2.1.0 from Trivy and Grype (application/sarif+json, or Ratify's
//     application/vnd.aquasecurity.trivy.report.sarif.v1); see sarif.go for
//     how each scanner encodes severity, package and fixed version.
//   - Trivy JSON, schema 2 (application/vnd.aquasecurity.trivy.report+json),
//     and the cosign vulnerability predicate wrapping it that trivy's
//     referrer plugin attaches as application/json.
//   - CycloneDX JSON with a vulnerabilities array
//     (application/vnd.cyclonedx+json); a plain SBOM is not a report.
//   - grype's own JSON (`grype -o json`) as
//     application/vnd.anchore.grype+json, or as application/json recognised
//     by its matches and descriptor; see grype.go for severity and fix.
//
// Package vatest writes reports shaped like the scanners' for tests.
//
// # Sources
//
// A Source answers "what is the newest report for this image digest, and who
// vouches for it". Its errors separate "there is none" (ErrNoReport: the
// policy's unscanned knob applies) from "there is one but it cannot be used"
// (ErrUntrustedReport, ErrMalformedReport: deny) from "could not ask"
// (anything else, registry errors keeping their class for fail-open and
// RegistryUnavailable).
//
// ReferrersSource reads reports attached to the image digest as OCI
// referrers through a Registry (the subset of plugin/registry's Repository it
// needs, declared here). It lists the referrers once, keeps artifacts whose
// artifactType (or config media type) is a report type, orders them by their
// creation annotation, and reads the newest first: manifest (whose subject
// must be the image), signature check through a ReportVerifier when
// Query.RequireSigned, then the report blob (bounded by MaxReportBytes) and
// parse. Undated artifacts are ordered by the report content's time. Only
// MaxCandidates artifacts are examined, so a flood of junk referrers costs a
// bounded number of round trips; when it pushes every report out of that
// window the answer is ErrUntrustedReport (deny), never ErrNoReport.
//
// # An HTTP scanner API source (e.g. Harbor)
//
// A registry that scans on push can be asked instead of reading referrers.
// A HarborSource would implement Source like this:
//
//   - From Query.Image.Name take host, project and repository; from
//     Query.Image.Subject the digest. GET
//     /api/v2.0/projects/{project}/repositories/{repo}/artifacts/{digest}/additions/vulnerabilities
//     (repo path-escaped twice, as Harbor requires for nested names) with
//     Accept: application/vnd.security.vulnerability.report; version=1.1,
//     over an http.Client with the registry's TLS settings, a timeout from
//     ctx, and io.LimitReader(max_report_bytes) on the body.
//   - 404, or a report whose scan did not finish, is ErrNoReport; 5xx and
//     network errors are returned as unavailability.
//   - Map the body into a Report with a small parser in this package
//     (Format "harbor"): vulnerabilities[].id, package, version, fix_version
//     (empty: FixNotAvailable), severity (Harbor's Critical/High/Medium/Low/
//     Negligible/Unknown all map through the same vocabulary), generated_at as
//     CreatedAt, scanner.name and scanner.version. Fuzz it like the others.
//   - Trust comes from the authenticated TLS connection to a configured
//     Harbor, not from a signature: such a source would be trusted by
//     configuration, and Query.RequireSigned would be answered by that
//     configuration (a source that cannot vouch must return
//     ErrUntrustedReport rather than ignore the flag).
//
// Several sources compose by trying them in order and taking the first answer
// that is not ErrNoReport; nothing in Evaluate depends on where the report
// came from.
package va
