package installer

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/pullguard/pullguard/daemonset/hoststate"
	"github.com/pullguard/pullguard/plugin/nri"
)

const dropIn = "/etc/containerd/conf.d/99-pullguard-nri.toml"

func TestAddContainerdImport(t *testing.T) {
	q := `"` + dropIn + `"`
	tests := []struct{ name, in, want string }{
		{"after the version line", "version = 2\nroot = \"/var/lib/containerd\"\n\n[grpc]\n  address = \"x\"\n",
			"version = 2\nimports = [" + q + "]\nroot = \"/var/lib/containerd\"\n\n[grpc]\n  address = \"x\"\n"},
		{"no version line: at the top", "# containerd\n[plugins]\n", "imports = [" + q + "]\n# containerd\n[plugins]\n"},
		{"version line without a newline", "version = 3", "version = 3\nimports = [" + q + "]\n"},
		{"into a one-line list", "version = 3\nimports = ['/etc/containerd/a.toml']\n", "version = 3\nimports = ['/etc/containerd/a.toml', " + q + "]\n"},
		{"into an empty list", "imports = []\n", "imports = [" + q + "]\n"},
		{"into a multi-line list with comments and a trailing comma",
			"version = 3\nimports = [\n  \"runtime.d/*.toml\", # the runtime's [own]\n  '/etc/containerd/site.toml',\n]\n[plugins]\n",
			"version = 3\nimports = [\n  \"runtime.d/*.toml\", # the runtime's [own]\n  '/etc/containerd/site.toml',\n" + q + "]\n[plugins]\n"},
		{"into a multi-line list without a trailing comma",
			"imports = [\n  \"a.toml\" # a ] in a comment\n]\n",
			"imports = [\n  \"a.toml\" # a ] in a comment\n, " + q + "]\n"},
		{"a table's imports key is not the top-level one", "version = 3\n[plugins.x]\n  imports = ['keep']\n",
			"version = 3\nimports = [" + q + "]\n[plugins.x]\n  imports = ['keep']\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := addContainerdImport([]byte(tc.in), dropIn)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
	for _, bad := range []string{"imports = [\n", "imports = \"x\"\n", "[x\n"} {
		if _, err := addContainerdImport([]byte(bad), dropIn); err == nil {
			t.Errorf("edited %q", bad)
		}
	}
}

func FuzzAddContainerdImport(f *testing.F) {
	f.Add("version = 3\nimports = [\n  'a', # c\n]\n")
	f.Add("imports = [\"a\\\"]\"]\n")
	f.Add("version = 2\n[plugins]\n")
	f.Fuzz(func(t *testing.T, in string) {
		out, err := addContainerdImport([]byte(in), dropIn)
		if err != nil {
			return
		}
		var doc struct{ Imports []string }
		if _, err := toml.Decode(string(out), &doc); err != nil || len(doc.Imports) == 0 || doc.Imports[len(doc.Imports)-1] != dropIn {
			t.Fatalf("accepted edit gives imports %q (%v)", doc.Imports, err)
		}
	})
}

func TestCheckRuntime(t *testing.T) {
	for _, tc := range []struct {
		rt RuntimeInfo
		ok bool
	}{
		{RuntimeInfo{"containerd", "v2.4.2"}, true},
		{RuntimeInfo{"containerd", "2.4.2+unknown"}, true},
		{RuntimeInfo{"containerd", "v2.2.0"}, true},
		{RuntimeInfo{"containerd", "v2.2.0-rc.1"}, true},
		{RuntimeInfo{"containerd", "v3.0.0"}, true},
		{RuntimeInfo{"containerd", "v2.1.4"}, false},
		{RuntimeInfo{"containerd", "1.7.27"}, false},
		{RuntimeInfo{"containerd", "unknown"}, false},
		{RuntimeInfo{"cri-o", "1.34.0"}, false},
	} {
		err := checkRuntime(tc.rt)
		if (err == nil) != tc.ok {
			t.Errorf("checkRuntime(%+v) = %v, want ok %t", tc.rt, err, tc.ok)
		}
		if err != nil && (!errors.Is(err, ErrNoNRIValidation) || !strings.Contains(err.Error(), "--pull-only")) {
			t.Errorf("checkRuntime(%+v) = %v: want ErrNoNRIValidation and the way out", tc.rt, err)
		}
	}
}

func TestOverlayFSGlobsPlannedFiles(t *testing.T) {
	root := node(t, map[string]string{"/etc/containerd/conf.d/10-a.toml": "a", "/etc/containerd/conf.d/20-b.toml": "b"})
	o := overlayFS{base: os.DirFS(string(root)), files: map[string][]byte{
		"/etc/containerd/conf.d/99-pullguard-nri.toml": []byte("p"),
		"/etc/containerd/conf.d/20-b.toml":             nil, // removed
	}}
	got, err := fs.Glob(o, "etc/containerd/conf.d/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"etc/containerd/conf.d/10-a.toml", "etc/containerd/conf.d/99-pullguard-nri.toml"}; !slices.Equal(got, want) {
		t.Errorf("glob = %q, want %q", got, want)
	}
	if data, err := fs.ReadFile(o, "etc/containerd/conf.d/99-pullguard-nri.toml"); err != nil || string(data) != "p" {
		t.Errorf("planned file reads %q, %v", data, err)
	}
	if _, err := fs.ReadFile(o, "etc/containerd/conf.d/20-b.toml"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("removed file reads: %v", err)
	}
}

// dumpContainerd runs containerd's own loader (containerd config dump) on
// the node's containerd config. The files under /etc/containerd are copied
// out with their absolute /etc/containerd/ paths pointed at the copy, so
// containerd reads the node's files and not this machine's.
func dumpContainerd(t *testing.T, bin string, root hoststate.Root) *nri.ContainerdNRI {
	t.Helper()
	tmp := t.TempDir()
	base := filepath.Join(tmp, "etc", "containerd") + "/"
	err := filepath.WalkDir(root.Path("/etc/containerd"), func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(root.Path("/etc/containerd"), p)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		dst := filepath.Join(base, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, []byte(strings.ReplaceAll(string(data), "/etc/containerd/", base)), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--config", filepath.Join(base, "config.toml"), "config", "dump")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("containerd config dump: %v\n%s", err, stderr.String())
	}
	if strings.Contains(stderr.String(), nri.ContainerdPluginID) {
		t.Errorf("containerd warns about NRI's settings:\n%s", stderr.String())
	}
	// The dump is the merged config: read it with serve's reader, without
	// its imports (already merged in; reading them again would read this
	// machine's /etc/containerd/conf.d).
	var doc map[string]any
	if _, err := toml.Decode(string(out), &doc); err != nil {
		t.Fatalf("parse dump: %v", err)
	}
	delete(doc, "imports")
	var buf strings.Builder
	if err := toml.NewEncoder(&buf).Encode(doc); err != nil {
		t.Fatal(err)
	}
	c, err := nri.ReadContainerdNRIFS(fstest.MapFS{"dump.toml": {Data: []byte(buf.String())}}, "/dump.toml")
	if err != nil {
		t.Fatal(err)
	}
	return c
}
