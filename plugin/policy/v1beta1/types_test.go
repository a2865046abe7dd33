package v1beta1

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode"
)

// Every field of the spec has its name in all three encodings, and they agree: yaml is json's
// name, toml is its snake_case form or "-". A field added with only a json tag would otherwise
// decode from YAML and TOML under a name nobody documented.
func TestEncodingNamesAgree(t *testing.T) {
	seen := map[reflect.Type]bool{}
	var walk func(reflect.Type, string)
	walk = func(typ reflect.Type, path string) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || seen[typ] {
			return
		}
		seen[typ] = true
		for i := range typ.NumField() {
			f := typ.Field(i)
			j, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			y, hasYAML := f.Tag.Lookup("yaml")
			tm, hasTOML := f.Tag.Lookup("toml")
			where := path + "." + f.Name
			switch {
			case j == "" || !hasYAML || !hasTOML:
				t.Errorf("%s: want json, yaml and toml names, have tag %q", where, f.Tag)
			case y != j:
				t.Errorf("%s: yaml name %q differs from json name %q", where, y, j)
			case tm != "-" && tm != snake(j):
				t.Errorf("%s: toml name %q, want %q (or \"-\")", where, tm, snake(j))
			}
			walk(f.Type, where)
		}
	}
	walk(reflect.TypeFor[ImagePolicySpec](), "spec")
	if len(seen) < 8 {
		t.Fatalf("walked only %d types", len(seen))
	}
}

func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) && i > 0 {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

func TestDurationAndDate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"5m", 5 * time.Minute, false}, {"90s", 90 * time.Second, false}, {"1h30m", 90 * time.Minute, false},
		{"-5m", -5 * time.Minute, false}, // syntax only; the range is the model's to check
		{"5", 0, true}, {"7d", 0, true}, {"", 0, true},
	} {
		var d Duration
		err := d.UnmarshalText([]byte(tc.in))
		if (err != nil) != tc.err {
			t.Errorf("%q: error %v", tc.in, err)
			continue
		}
		if err != nil {
			if d != "" {
				t.Errorf("%q: kept %q after an error", tc.in, d)
			}
			continue
		}
		if got, _ := d.Duration(); got != tc.want || d != Duration(tc.in) {
			t.Errorf("%q: %v (%q)", tc.in, got, d)
		}
	}

	for _, tc := range []struct {
		in   any
		want string // RFC 3339 of the parsed time, "" for the zero time
		err  bool
	}{
		{"2027-01-31", "2027-01-31T23:59:59.999999999Z", false},
		{"2027-01-31T12:00:00+02:00", "2027-01-31T12:00:00+02:00", false},
		{"", "", false},
		{"tomorrow", "", true},
		{"2027-1-31", "", true},
		{time.Date(2027, 1, 31, 12, 0, 0, 0, time.UTC), "2027-01-31T12:00:00Z", false},
		{time.Date(2027, 1, 31, 0, 0, 0, 0, time.FixedZone("date-local", 3600)), "2027-01-31T23:59:59.999999999Z", false},
		{42, "", true},
	} {
		var d Date
		err := d.UnmarshalTOML(tc.in)
		if (err != nil) != tc.err {
			t.Errorf("%v: error %v", tc.in, err)
			continue
		}
		if err != nil {
			continue
		}
		got, err := d.Time()
		if err != nil {
			t.Errorf("%v: decoded %q, which does not parse: %v", tc.in, d, err)
			continue
		}
		if s := got.Format(time.RFC3339Nano); (tc.want == "" && !got.IsZero()) || (tc.want != "" && s != tc.want) {
			t.Errorf("%v: %s, want %s", tc.in, s, tc.want)
		}
	}
}

// The node daemon decodes policies into this package, so it must not pull Kubernetes client
// libraries into the daemon: nothing here imports them.
func TestNoKubernetesImports(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			if p := strings.Trim(imp.Path.Value, `"`); strings.Contains(p, "k8s.io/") {
				t.Errorf("%s imports %s", name, p)
			}
		}
	}
}
