package nri

import (
	"context"
	"github.com/pullguard/pullguard/plugin/nri/nritest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/BurntSushi/toml"
)

// containerdFiles writes a main config and the files it imports into a
// temp dir; "DIR" in the contents is that directory, so imports can be
// absolute as on a node.
func containerdFiles(t *testing.T, files map[string]string) (dir, main string) {
	t.Helper()
	dir = t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(content, "DIR", dir)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir, filepath.Join(dir, "config.toml")
}

func TestReadContainerdNRIMergesLikeContainerd(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  ContainerdNRI // Files not compared
		// requires is Requires("pullguard", "10").
		requires bool
	}{
		{
			name:  "no NRI section: on, validator off",
			files: map[string]string{"config.toml": "version = 3\n"},
			want:  ContainerdNRI{Enabled: true},
		},
		{
			name: "validator in the main file",
			files: map[string]string{"config.toml": `version = 3
[plugins.'io.containerd.nri.v1.nri']
  socket_path = '/run/nri/x.sock'
  plugin_request_timeout = '3s'
  [plugins.'io.containerd.nri.v1.nri'.default_validator]
    enable = true
    required_plugins = ['pullguard']
`},
			want:     ContainerdNRI{Enabled: true, SocketPath: "/run/nri/x.sock", RequestTimeout: 3 * time.Second, ValidatorEnabled: true, RequiredPlugins: []string{"pullguard"}},
			requires: true,
		},
		{
			// A later file that names only the validator keeps the earlier
			// disable = true: read as a whole-section replacement, NRI
			// would look on while containerd has it off.
			name: "a later partial section keeps the earlier keys",
			files: map[string]string{
				"config.toml": `version = 2
imports = ["DIR/conf.d/*.toml"]
[plugins."io.containerd.nri.v1.nri"]
  disable = true
  socket_path = "/run/nri/custom.sock"
`,
				"conf.d/50-validator.toml": `version = 3
[plugins.'io.containerd.nri.v1.nri'.default_validator]
  enable = true
  required_plugins = ['10-pullguard']
`,
			},
			want: ContainerdNRI{Enabled: false, SocketPath: "/run/nri/custom.sock", ValidatorEnabled: true, RequiredPlugins: []string{"10-pullguard"}},
		},
		{
			name: "a later list replaces the earlier one, relative imports in order",
			files: map[string]string{
				"config.toml": `version = 3
imports = ["conf.d/*.toml"]
[plugins.'io.containerd.nri.v1.nri'.default_validator]
  enable = true
  required_plugins = ['pullguard']
  tolerate_missing_plugins_annotation = 'example.com/break-glass'
`,
				"conf.d/10-a.toml": "version = 3\n[plugins.'io.containerd.nri.v1.nri'.default_validator]\n  required_plugins = ['a']\n",
				"conf.d/20-b.toml": "version = 3\n[plugins.'io.containerd.nri.v1.nri'.default_validator]\n  required_plugins = ['b']\n",
			},
			want: ContainerdNRI{Enabled: true, ValidatorEnabled: true, RequiredPlugins: []string{"b"}, TolerateAnnotation: "example.com/break-glass"},
		},
		{
			name: "disabled_plugins in an imported file",
			files: map[string]string{
				"config.toml": `version = 3
imports = ["DIR/extra.toml"]
[plugins.'io.containerd.nri.v1.nri'.default_validator]
  enable = true
  required_plugins = ['pullguard']
`,
				"extra.toml": "version = 3\ndisabled_plugins = ['io.containerd.nri.v1.nri']\n",
			},
			want: ContainerdNRI{Enabled: false, ValidatorEnabled: true, RequiredPlugins: []string{"pullguard"}},
		},
	}
	bin := nritest.ContainerdBinary(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, main := containerdFiles(t, tc.files)
			got, err := ReadContainerdNRI(main)
			if err != nil {
				t.Fatal(err)
			}
			if got.Files[0] != main {
				t.Errorf("Files = %v, want the main file first", got.Files)
			}
			got.Files = nil
			if !equalNRI(*got, tc.want) {
				t.Errorf("read %+v\nwant %+v", *got, tc.want)
			}
			if r := got.Requires("pullguard", "10"); r != tc.requires {
				t.Errorf("Requires = %t, want %t", r, tc.requires)
			}
			if bin == "" {
				return
			}
			// containerd's own loader, on the same files, must agree.
			dumped := dumpNRI(t, bin, main)
			if !equalNRI(dumped, tc.want) {
				t.Errorf("containerd config dump says %+v\nwant %+v", dumped, tc.want)
			}
		})
	}
}

func equalNRI(a, b ContainerdNRI) bool {
	return a.Enabled == b.Enabled && a.SocketPath == b.SocketPath && a.RequestTimeout == b.RequestTimeout &&
		a.ValidatorEnabled == b.ValidatorEnabled && slices.Equal(a.RequiredPlugins, b.RequiredPlugins) &&
		a.TolerateAnnotation == b.TolerateAnnotation
}

func TestReadContainerdNRIFSReadsImportsInsideTheFS(t *testing.T) {
	// A node's / mounted elsewhere: the absolute import names a path of the
	// node, found inside fsys, not on this machine.
	fsys := fstest.MapFS{
		"etc/containerd/config.toml":                  {Data: []byte("version = 3\nimports = ['/etc/containerd/conf.d/*.toml']\n")},
		"etc/containerd/conf.d/99-pullguard-nri.toml": {Data: []byte("version = 3\n[plugins.'io.containerd.nri.v1.nri'.default_validator]\n  enable = true\n  required_plugins = ['pullguard']\n")},
	}
	got, err := ReadContainerdNRIFS(fsys, "/etc/containerd/config.toml")
	if err != nil {
		t.Fatal(err)
	}
	if !got.Requires("pullguard", "10") || !slices.Equal(got.Files, []string{"/etc/containerd/config.toml", "/etc/containerd/conf.d/99-pullguard-nri.toml"}) {
		t.Errorf("read %+v", got)
	}
	if p := got.Problems("pullguard", "10"); len(p) != 0 {
		t.Errorf("Problems = %q", p)
	}
}

func TestReadContainerdNRIMissingPlainImportFails(t *testing.T) {
	// containerd refuses to start when a plain (non-glob) import is missing.
	_, main := containerdFiles(t, map[string]string{"config.toml": "version = 3\nimports = ['DIR/missing.toml']\n"})
	if _, err := ReadContainerdNRI(main); err == nil || !strings.Contains(err.Error(), "missing.toml") {
		t.Errorf("err = %v, want the missing import named", err)
	}
}

func TestMergeTablesDoesNotAlias(t *testing.T) {
	dst := map[string]any{"a": map[string]any{"x": int64(1)}, "l": []any{"p"}}
	src := map[string]any{"a": map[string]any{"y": int64(2)}, "l": []any{"q"}}
	got := MergeTables(dst, src)
	a := got["a"].(map[string]any)
	if a["x"] != int64(1) || a["y"] != int64(2) || !slices.Equal(got["l"].([]any), []any{"q"}) {
		t.Errorf("merged %v", got)
	}
	a["x"] = int64(9)
	if dst["a"].(map[string]any)["x"] != int64(1) {
		t.Error("the merge result shares a table with dst")
	}
}

// dumpNRI asks containerd's loader for the merged config (containerd
// config dump) and reads its NRI settings.
func dumpNRI(t *testing.T, bin, main string) ContainerdNRI {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--config", main, "config", "dump")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("containerd config dump: %v\n%s", err, stderr.String())
	}
	var dump struct {
		DisabledPlugins []string `toml:"disabled_plugins"`
		Plugins         map[string]toml.Primitive
	}
	md, err := toml.Decode(string(out), &dump)
	if err != nil {
		t.Fatalf("parse dump: %v\n%s", err, out)
	}
	var s struct {
		Disable              bool   `toml:"disable"`
		SocketPath           string `toml:"socket_path"`
		PluginRequestTimeout string `toml:"plugin_request_timeout"`
		Validator            struct {
			Enable   bool     `toml:"enable"`
			Required []string `toml:"required_plugins"`
			Tolerate string   `toml:"tolerate_missing_plugins_annotation"`
		} `toml:"default_validator"`
	}
	if err := md.PrimitiveDecode(dump.Plugins[nriPluginID], &s); err != nil {
		t.Fatal(err)
	}
	c := ContainerdNRI{
		Enabled:            !s.Disable && !slices.Contains(dump.DisabledPlugins, nriPluginID),
		ValidatorEnabled:   s.Validator.Enable,
		RequiredPlugins:    s.Validator.Required,
		TolerateAnnotation: s.Validator.Tolerate,
	}
	// The dump fills containerd's defaults in; the reader reports only
	// what the files set, so defaults compare as unset.
	if s.SocketPath != "/var/run/nri/nri.sock" {
		c.SocketPath = s.SocketPath
	}
	if s.PluginRequestTimeout != "2s" {
		c.RequestTimeout, _ = time.ParseDuration(s.PluginRequestTimeout)
	}
	if len(c.RequiredPlugins) == 0 {
		c.RequiredPlugins = nil
	}
	return c
}
