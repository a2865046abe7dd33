package imageproxy

import (
	"errors"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestListen(t *testing.T) {
	gid, _ := targetGroup(t)
	tests := []struct {
		name      string
		prepare   func(t *testing.T, path string) // sets up what is at path beforehand
		mode      os.FileMode
		group     string
		wantErr   string // substring; "" = success
		wantMode  os.FileMode
		wantGroup int
	}{
		{name: "fresh path, parent created, default mode", wantMode: 0o660, wantGroup: os.Getgid()},
		{name: "explicit mode", mode: 0o600, wantMode: 0o600, wantGroup: os.Getgid()},
		{name: "group by id", group: strconv.Itoa(gid), wantMode: 0o660, wantGroup: gid},
		{name: "unknown group", group: "no-such-group-pullguard", wantErr: "no-such-group-pullguard"},
		{name: "stale socket from a crash is replaced", prepare: staleSocket, wantMode: 0o660, wantGroup: os.Getgid()},
		{name: "live socket is not stolen", prepare: liveSocket, wantErr: "in use"},
		{name: "regular file is not replaced", prepare: regularFile, wantErr: "not a socket"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(shortTempDir(t), "a", "b", "pg.sock")
			if tc.prepare != nil {
				if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
					t.Fatal(err)
				}
				tc.prepare(t, path)
			}
			l, err := Listen(path, tc.mode, tc.group)
			if tc.wantErr != "" {
				if err == nil {
					_ = l.Close()
					t.Fatalf("Listen succeeded, want error containing %q", tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), path) {
					t.Errorf("error %q, want it to name %s and contain %q", err, path, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Listen: %v", err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != tc.wantMode {
				t.Errorf("socket mode %v, want socket %o", fi.Mode(), tc.wantMode)
			}
			if st := fi.Sys().(*syscall.Stat_t); int(st.Gid) != tc.wantGroup {
				t.Errorf("socket group %d, want %d", st.Gid, tc.wantGroup)
			}
			if di, err := os.Stat(filepath.Dir(path)); err != nil || di.Mode().Perm() != 0o750 {
				t.Errorf("parent directory %v, %v; want it created with 0750", di, err)
			}
			// The new listener is the one answering.
			accepted := make(chan error, 1)
			go func() {
				c, err := l.Accept()
				if err == nil {
					_ = c.Close()
				}
				accepted <- err
			}()
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatalf("dial new socket: %v", err)
			}
			_ = c.Close()
			if err := <-accepted; err != nil {
				t.Errorf("accept: %v", err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket still present after Close: %v", err)
			}
		})
	}
}

func TestListenGroupByName(t *testing.T) {
	gid, name := targetGroup(t)
	if name == "" {
		t.Skip("no named group to chown to")
	}
	path := filepath.Join(shortTempDir(t), "pg.sock")
	l, err := Listen(path, 0, name)
	if err != nil {
		t.Fatalf("Listen with group %q: %v", name, err)
	}
	defer l.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Gid) != gid {
		t.Errorf("socket group %d, want %d (%s)", st.Gid, gid, name)
	}
}

// targetGroup picks a group Listen may chown to: as root one that differs from
// the process's own (so the chown is observable), else the process's group.
func targetGroup(t *testing.T) (int, string) {
	t.Helper()
	if os.Getuid() == 0 {
		for _, name := range []string{"nogroup", "daemon", "bin"} {
			if g, err := user.LookupGroup(name); err == nil {
				if id, err := strconv.Atoi(g.Gid); err == nil && id != os.Getgid() {
					return id, name
				}
			}
		}
	}
	g, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		return os.Getgid(), ""
	}
	return os.Getgid(), g.Name
}

// staleSocket leaves a socket file nobody listens on, as a crash would.
func staleSocket(t *testing.T, path string) {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
}

// liveSocket serves path for the rest of the test and checks afterwards that
// it was left alone.
func liveSocket(t *testing.T, path string) {
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	t.Cleanup(func() {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Errorf("live socket was disturbed: %v", err)
		} else {
			_ = c.Close()
		}
		_ = l.Close()
	})
}

func regularFile(t *testing.T, path string) {
	if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
			t.Errorf("regular file was touched: %q, %v", b, err)
		}
	})
}

func TestUpstreamTarget(t *testing.T) {
	tests := []struct {
		in, want, wantErr string
	}{
		{in: "unix:///run/containerd/containerd.sock", want: "unix:///run/containerd/containerd.sock"},
		{in: "/run/containerd/containerd.sock", want: "unix:///run/containerd/containerd.sock"},
		{in: "", wantErr: "empty"},
		{in: "unix://", wantErr: "no socket path"},
		{in: "tcp://127.0.0.1:1234", wantErr: "only unix"},
	}
	for _, tc := range tests {
		got, err := upstreamTarget(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("upstreamTarget(%q) = %q, %v; want error containing %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("upstreamTarget(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func FuzzUpstreamTarget(f *testing.F) {
	for _, s := range []string{"unix:///a.sock", "/a.sock", "", "unix://", "tcp://x", "dns:///x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := upstreamTarget(in)
		if err == nil && (!strings.HasPrefix(got, "unix://") || len(got) == len("unix://")) {
			t.Errorf("upstreamTarget(%q) = %q: accepted a non-unix or empty target", in, got)
		}
	})
}
