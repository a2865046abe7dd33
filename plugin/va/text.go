package va

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on strings copied from untrusted reports into findings and, from
// there, into denial messages and logs.
const (
	maxIDLen      = 128
	maxPackageLen = 256
	maxVersionLen = 128
	maxNameLen    = 128
)

// clean makes an untrusted string safe to show: invalid UTF-8 and control
// characters are dropped (a report must not be able to forge log lines or
// terminal escapes), surrounding space trimmed, and the rune count bounded.
func clean(s string, max int) string {
	if s == "" {
		return ""
	}
	var b strings.Builder
	n := 0
	for len(s) > 0 {
		r, size := utf8.DecodeRuneInString(s)
		s = s[size:]
		if r == utf8.RuneError && size <= 1 {
			continue
		}
		if unicode.IsControl(r) {
			r = ' '
		}
		if n == max {
			b.WriteString("…")
			break
		}
		b.WriteRune(r)
		n++
	}
	return strings.TrimSpace(b.String())
}

// textFields holds the "Key: value" lines Trivy and Grype write into SARIF
// help and message texts. Only the first occurrence of a key counts: both
// tools write the structured lines first and free-form descriptions (which
// could contain look-alike lines) after them.
type textFields map[string]string

func parseTextFields(text string) textFields {
	f := textFields{}
	for line := range strings.SplitSeq(text, "\n") {
		line = strings.TrimSpace(line)
		if id, ok := strings.CutPrefix(line, "Vulnerability "); ok {
			if _, seen := f["Vulnerability"]; !seen {
				f["Vulnerability"] = strings.TrimSpace(id)
			}
			continue
		}
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		key = strings.TrimSpace(key)
		if _, seen := f[key]; seen {
			continue
		}
		f[key] = strings.TrimSpace(value)
	}
	return f
}

func (f textFields) get(key string) (string, bool) {
	v, ok := f[key]
	return v, ok
}
