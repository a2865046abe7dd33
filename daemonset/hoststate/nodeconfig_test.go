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

func TestSetNode(t *testing.T) {
	in := "# from the ConfigMap\n[server]\nsocket = \"/run/pullguard/pullguard.sock\"\nupstream = \"unix:///old\"\n\n[nri]\n# the gate\nmode = \"enforce\"\ntimeout = \"1s\"\n\n[[signers]]\nname = \"a\"\n"
	n := Node{
		Upstream: "unix:///run/containerd/containerd.sock",
		NRIMode:  "enforce",
		NRI:      &NodeNRI{Socket: "/run/nri/custom.sock", ContainerdConfig: "/etc/containerd/config.toml", SandboxImage: ""},
	}
	out, err := SetNode([]byte(in), n)
	if err != nil {
		t.Fatal(err)
	}
	want := "# from the ConfigMap\n[server]\nsocket = \"/run/pullguard/pullguard.sock\"\nupstream = \"unix:///run/containerd/containerd.sock\"\n\n" +
		"[nri]\nsandbox_image = \"\"\ncontainerd_config = \"/etc/containerd/config.toml\"\nsocket = \"/run/nri/custom.sock\"\n# the gate\nmode = \"enforce\"\ntimeout = \"1s\"\n\n[[signers]]\nname = \"a\"\n"
	if string(out) != want {
		t.Errorf("got\n%s\nwant\n%s", out, want)
	}
	// An explicit empty sandbox image is written, not left to the default.
	if v, ok, err := tableKey(out, "nri", "sandbox_image"); err != nil || !ok || v != "" {
		t.Errorf("sandbox_image = %q, %t, %v", v, ok, err)
	}
	// Applying it again changes nothing.
	again, err := SetNode(out, n)
	if err != nil || string(again) != string(out) {
		t.Errorf("second SetNode changed the config (%v):\n%s", err, again)
	}
	// pull-only: the mode alone; the [nri] table is added when missing.
	out, err = SetNode([]byte("[server]\nupstream = \"x\"\n"), Node{Upstream: "unix:///u", NRIMode: "pull-only"})
	if err != nil {
		t.Fatal(err)
	}
	if want := "[server]\nupstream = \"unix:///u\"\n\n[nri]\nmode = \"pull-only\"\n"; string(out) != want {
		t.Errorf("got %q, want %q", out, want)
	}
	// A [nri] subtable's keys are not [nri]'s.
	out, err = SetNode([]byte("[nri]\nmode = \"enforce\"\n[nri.extra]\nmode = \"keep\"\n"), Node{NRIMode: "pull-only"})
	if err != nil || !strings.Contains(string(out), "[nri.extra]\nmode = \"keep\"") || !strings.HasPrefix(string(out), "[nri]\nmode = \"pull-only\"\n") {
		t.Errorf("got %q, %v", out, err)
	}
}
