package va

// dedupe folds findings that name the same vulnerability in the same package
// version (Trivy reports one per location, SARIF one per rule/result pair)
// so counts reflect distinct problems. The merged finding keeps the worst
// severity and the most positive fix information.
func dedupe(in []Finding) []Finding {
	type key struct{ id, pkg, version string }
	index := make(map[key]int, len(in))
	out := in[:0:0]
	for _, f := range in {
		k := key{f.ID, f.Package, f.InstalledVersion}
		i, seen := index[k]
		if !seen {
			index[k] = len(out)
			out = append(out, f)
			continue
		}
		m := &out[i]
		if worse(f.Severity, m.Severity) {
			m.Severity = f.Severity
		}
		if (f.Fix == FixAvailable && m.Fix != FixAvailable) || (f.Fix == FixNotAvailable && m.Fix == FixUnknown) {
			m.Fix, m.FixedVersion = f.Fix, f.FixedVersion
		}
	}
	return out
}

// worse orders severities for display and merging: unknown is placed above
// critical because, until a policy maps it, nothing is known to bound it.
func worse(a, b Severity) bool { return rank(a) > rank(b) }

func rank(s Severity) int {
	if s == SeverityUnknown {
		return int(SeverityCritical) + 1
	}
	return int(s)
}
