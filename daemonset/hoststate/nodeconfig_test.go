package hoststate

import (
	"strings"
	"testing"
)

func TestSetUpstream(t *testing.T) {
	const ep = "unix:///run/k3s/containerd/containerd.sock"
	tests := []struct {
		name, in, want string
	}{
		{"replaces in [server]", "[server]\nsocket = \"/s\"\nupstream = \"unix:///old\" # was\n\n[log]\nlevel = \"info\"\n",
			"[server]\nsocket = \"/s\"\nupstream = \"" + ep + "\"\n\n[log]\nlevel = \"info\"\n"},
		{"adds to [server]", "# c\n[server]\nsocket = \"/s\"\n[log]\nlevel = \"info\"\n",
			"# c\n[server]\nupstream = \"" + ep + "\"\nsocket = \"/s\"\n[log]\nlevel = \"info\"\n"},
		{"adds [server]", "[log]\nlevel = \"info\"\n", "[log]\nlevel = \"info\"\n\n[server]\nupstream = \"" + ep + "\"\n"},
		{"empty file", "", "\n[server]\nupstream = \"" + ep + "\"\n"},
		{"leaves other tables' upstream keys", "[server]\nupstream = \"a\"\n[other]\nupstream = \"b\"\n",
			"[server]\nupstream = \"" + ep + "\"\n[other]\nupstream = \"b\"\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SetUpstream([]byte(tc.in), ep)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
	if _, err := SetUpstream([]byte("[server\n"), ep); err == nil {
		t.Error("broken TOML accepted")
	}
	// Dotted keys at top level cannot be edited line-wise: refuse, don't guess.
	if _, err := SetUpstream([]byte("server.upstream = \"x\"\n"), ep); err == nil {
		t.Error("unverifiable edit accepted")
	}
}

func TestServerSocket(t *testing.T) {
	for in, want := range map[string]string{
		"":                                      DefaultSocket,
		"[server]\nsocket = \"/run/x.sock\"\n":  "/run/x.sock",
		"[server]\nsocket = \"unix:///a.sock\"": "/a.sock",
	} {
		got, err := ServerSocket([]byte(in))
		if err != nil || got != want {
			t.Errorf("ServerSocket(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ServerSocket([]byte("[server]\nsocket = \"rel.sock\"\n")); err == nil {
		t.Error("relative socket accepted")
	}
}

func FuzzSetUpstream(f *testing.F) {
	f.Add("[server]\nupstream = \"x\"\n", "unix:///run/containerd/containerd.sock")
	f.Add("[log]\n", "/a")
	f.Add("[server]\nupstream = '''\nmulti\n'''\n", "e")
	f.Fuzz(func(t *testing.T, in, ep string) {
		out, err := SetUpstream([]byte(in), ep)
		if err != nil {
			return
		}
		s, err := decodeServer(out)
		if err != nil || s.Server.Upstream != ep {
			t.Fatalf("SetUpstream returned config with upstream %q (%v), want %q", s.Server.Upstream, err, ep)
		}
		if !strings.Contains(string(out), "upstream") {
			t.Fatal("no upstream line")
		}
	})
}
