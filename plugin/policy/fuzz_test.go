package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func FuzzParseYAML(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	portieris, _ := filepath.Glob(filepath.Join("testdata", "portieris*", "*.yaml"))
	files = append(files, portieris...)
	for _, name := range files {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("apiVersion: pullguard.dev/v1beta1\nkind: ClusterImagePolicy\nmetadata: {name: c}\nspec:\n  repositories:\n  - name: '*'\n    policy: {va: {enabled: true, allow: [{id: X, expires: 2027-01-01}]}}\n---\n"))
	f.Add([]byte("a: &a [*a, *a]\n"))
	f.Add([]byte("---\n- 1\n---\n{}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, err := ParseYAML(data, "fuzz.yaml")
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		for i := range ps {
			if err := ps[i].Validate(); err != nil {
				t.Fatalf("ParseYAML returned an invalid policy: %v", err)
			}
			if !strings.HasPrefix(ps[i].Source, "fuzz.yaml") {
				t.Fatalf("source %q", ps[i].Source)
			}
		}
	})
}

func FuzzParseTOML(f *testing.F) {
	f.Add([]byte("[[policies]]\nkind = \"ClusterImagePolicy\"\nname = \"c\"\n[[policies.repositories]]\nname = \"*\"\n[policies.repositories.policy.va]\nenabled = true\nmax_report_age = \"1h\"\n"))
	f.Add([]byte("[[policies]]\nkind = \"ImagePolicy\"\nname = \"c\"\nnamespace = \"n\"\n[[policies.repositories]]\nname = \"*\"\n[[policies.repositories.policy.va.allow]]\nid = \"c\"\nexpires = 2027-01-01\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, err := ParseTOML(data, "fuzz.toml")
		if err != nil {
			return
		}
		for i := range ps {
			if err := ps[i].Validate(); err != nil {
				t.Fatalf("ParseTOML returned an invalid policy: %v", err)
			}
		}
	})
}

// FuzzMatch checks invariants of matching for arbitrary patterns and images: no panics, an
// exact pattern for the image always wins over anything else, and a pattern with a literal
// host only ever matches images on that host.
func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{
		{"*", "nginx"},
		{"registry.example.com/*", "evil.io/registry.example.com/x"},
		{"registry*.bluemix.net/armada/*", "registry.ng.bluemix.net/armada/x:1"},
		{"nginx:1.*", "nginx:1.25"},
		{"nginx@" + digestA, "nginx:1@" + digestA},
		{"docker.io/library/ngin*:1.25", "nginx:1.25"},
		{"index.docker.io/*", "library/busybox@" + digestB},
		{"127.0.0.1:5000/*", "127.0.0.1:5000/a/b"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pat, image string) {
		img, err := NormalizeImage(image)
		if err != nil {
			return
		}
		exact := img.String()
		if _, err := compilePattern(pat); err != nil {
			if _, err := NewSet([]Policy{cluster("c", pat)}, ""); err == nil {
				t.Fatalf("NewSet accepted pattern %q that does not compile", pat)
			}
			return
		}
		for _, order := range [][]string{{pat, exact}, {exact, pat}} {
			s, err := NewSet([]Policy{cluster("c", order...)}, "")
			if err != nil {
				t.Fatalf("NewSet(%q): %v", order, err)
			}
			m, err := s.Match("", image)
			if err != nil {
				t.Fatalf("Match(%q) after NormalizeImage succeeded: %v", image, err)
			}
			if m.Rule == nil {
				t.Fatalf("exact pattern %q did not match %q: %s", exact, image, m.Reason)
			}
			if m.Rule.Name != exact && !(m.Rule.Name == pat && pat == exact) {
				p, _ := compilePattern(m.Rule.Name)
				e, _ := compilePattern(exact)
				if !(p.exact && p.literal == e.literal) { // an equally exact twin may win on order
					t.Fatalf("rule %q won over exact %q for %q", m.Rule.Name, exact, image)
				}
			}
		}
		s, _ := NewSet([]Policy{cluster("c", pat)}, "")
		m, _ := s.Match("", image)
		p, _ := compilePattern(pat)
		if m.Rule != nil && !p.any && !strings.Contains(p.host, "*") {
			if got := strings.ToLower(strings.SplitN(img.Name(), "/", 2)[0]); got != p.host {
				t.Fatalf("pattern %q with host %q matched image on host %q", pat, p.host, got)
			}
		}
	})
}
