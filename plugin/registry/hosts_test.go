package registry

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseHostsFile(t *testing.T) {
	base := "/etc/containerd/certs.d/reg.example"
	yes := true
	tests := []struct {
		name    string
		file    string
		want    []Endpoint
		wantErr string
	}{
		{
			name: "mirrors in file order then server",
			file: `server = "https://reg.example"
[host."https://m2.example"]
  capabilities = ["pull", "resolve"]
[host."http://m1.example:5000"]
  capabilities = ["pull"]
  skip_verify = true
  ca = "ca.crt"
  client = [["c.pem", "/abs/k.pem"]]
  dial_timeout = "2s"
  [host."http://m1.example:5000".header]
    x-a = "1"
    x-b = ["2", "3"]
`,
			want: []Endpoint{
				{Scheme: "https", Host: "m2.example", Path: "/v2", Capabilities: CapPull | CapResolve},
				{Scheme: "http", Host: "m1.example:5000", Path: "/v2", Capabilities: CapPull, SkipVerify: &yes,
					CAFiles: []string{base + "/ca.crt"}, ClientPairs: [][2]string{{base + "/c.pem", "/abs/k.pem"}},
					DialTimeout: 2 * time.Second, Header: map[string][]string{"X-A": {"1"}, "X-B": {"2", "3"}}},
				{Scheme: "https", Host: "reg.example", Path: "/v2", Capabilities: capAll},
			},
		},
		{
			name: "no server: registry filled in by caller; bare host gets https and /v2 appended",
			file: `[host."mirror.example/sub"]` + "\n",
			want: []Endpoint{
				{Scheme: "https", Host: "mirror.example", Path: "/sub/v2", Capabilities: capAll},
				{Capabilities: capAll},
			},
		},
		{
			name: "override_path keeps the path",
			file: `[host."https://m.example/api/x"]` + "\noverride_path = true\n",
			want: []Endpoint{
				{Scheme: "https", Host: "m.example", Path: "/api/x", Capabilities: capAll},
				{Capabilities: capAll},
			},
		},
		{name: "unknown capability", file: `capabilities = ["fly"]`, wantErr: "unknown capability"},
		{name: "bad dial timeout", file: `[host."https://m"]` + "\ndial_timeout = \"soon\"\n", wantErr: "dial_timeout"},
		{name: "bad ca type", file: `ca = 3`, wantErr: "ca: invalid type"},
		{name: "bad scheme", file: `server = "httpx://x"`, wantErr: "unsupported scheme"},
		{name: "not toml", file: `server = `, wantErr: "decode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseHostsFile(base, []byte(tt.file))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestEndpointsDefaults(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "_default"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "_default", "hosts.toml"), []byte("capabilities = [\"pull\", \"resolve\", \"referrers\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := New(Options{PlainHTTP: []string{"plain.example:5000"}, InsecureSkipVerify: []string{"selfsigned.example"}})
	if err != nil {
		t.Fatal(err)
	}
	withDir, err := New(Options{HostsDir: root})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		c      *Client
		host   string
		scheme string
		target string
		skip   bool
		caps   Capability
	}{
		{c, "docker.io", "https", "registry-1.docker.io", false, capAll},
		{c, "ghcr.io", "https", "ghcr.io", false, capAll},
		{c, "127.0.0.1:5000", "http", "127.0.0.1:5000", false, capAll},
		{c, "localhost", "https", "localhost", false, capAll},
		{c, "plain.example:5000", "http", "plain.example:5000", false, capAll},
		{c, "selfsigned.example", "https", "selfsigned.example", true, capAll},
		{withDir, "any.example", "https", "any.example", false, CapPull | CapResolve | CapReferrers},
	}
	for _, tt := range tests {
		eps, err := tt.c.Endpoints(tt.host)
		if err != nil {
			t.Fatalf("%s: %v", tt.host, err)
		}
		last := eps[len(eps)-1]
		skip := last.SkipVerify != nil && *last.SkipVerify
		if len(eps) != 1 || last.Scheme != tt.scheme || last.Host != tt.target || last.Path != "/v2" || skip != tt.skip || last.Capabilities != tt.caps {
			t.Errorf("%s: endpoints %+v", tt.host, eps)
		}
	}
}

func TestEndpointsBadHostsFileIsAnError(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "reg.example")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte("capabilities = [\"teleport\"]"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := New(Options{HostsDir: root})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Endpoints("reg.example"); err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("err = %v, want an error naming %s", err, dir)
	}
}

func FuzzParseHostsFile(f *testing.F) {
	f.Add([]byte(`server = "https://reg.example"` + "\n[host.\"http://m:1/v2\"]\ncapabilities=[\"pull\"]\nca=[\"a\",\"b\"]\nclient=\"c\"\n"))
	f.Add([]byte(`[host."x"]` + "\noverride_path=true\n[host.\"x\".header]\nk=[\"v\"]\n"))
	f.Add([]byte(`skip_verify = true` + "\ndial_timeout=\"1s\""))
	f.Add([]byte("client = [[\"a\",\"b\"],\"c\"]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		eps, err := parseHostsFile("/base", data)
		if err != nil {
			return
		}
		if len(eps) == 0 {
			t.Fatal("parsed without error but no endpoints")
		}
		for i, ep := range eps {
			last := i == len(eps)-1
			if !last && (ep.Host == "" || (ep.Scheme != "http" && ep.Scheme != "https")) {
				t.Fatalf("mirror endpoint %d without host or with scheme %q", i, ep.Scheme)
			}
			if ep.Capabilities == 0 {
				t.Fatalf("endpoint %d has no capability", i)
			}
			for _, f := range ep.CAFiles {
				if !filepath.IsAbs(f) {
					t.Fatalf("CA file %q not made absolute", f)
				}
			}
			if ep.DialTimeout < 0 {
				t.Fatalf("negative dial timeout")
			}
		}
	})
}
