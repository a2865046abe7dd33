package main

import (
	"bytes"
	"context"
	"fmt"
	"github.com/pullguard/pullguard/plugin/running"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// These tests run `serve` in-process in front of a stand-in for containerd
// that fails every call Unavailable (a unit-test stub: the real-containerd
// tests live in integration/): a denial is answered by pullguard itself
// (code Unknown), an admitted pull is forwarded and fails Unavailable. That
// difference is what tells which policy is in force.

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

const denyAll = `
[[policies]]
kind = "ClusterImagePolicy"
name = "locked"
`

const admitAll = `
[[policies]]
kind = "ClusterImagePolicy"
name = "open"
  [[policies.repositories]]
  name = "*"
`

type served struct {
	t       *testing.T
	dir     string
	config  string
	socket  string
	metrics string
	logs    *syncBuffer
	done    chan int
	// upstream is the stand-in containerd; stopUpstream takes it away.
	upstream *grpc.Server
}

// startStubContainerd serves a gRPC server at path that fails every call
// with Unavailable once it has read the request, as containerd's CRI
// handlers do (they answer nothing before the message).
func startStubContainerd(t *testing.T, path string) *grpc.Server {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		if err := ss.RecvMsg(&emptypb.Empty{}); err != nil {
			return err
		}
		return status.Error(codes.Unavailable, "stub containerd: nothing here")
	}))
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return srv
}

func (s *served) stopUpstream() { s.upstream.Stop() }

func writeConfig(t *testing.T, path, socket, metrics, policies string) {
	t.Helper()
	body := fmt.Sprintf(`
[server]
socket = %q
admin_socket = %q
upstream = %q
shutdown_timeout = "2s"
state_dir = %q
# The stand-in containerd has no NRI: the create-time gate is tested on real containerd
# (integration/e2e).
[nri]
mode = "pull-only"
[log]
format = "json"
[metrics]
address = %q
[policy]
dir = ""
[cache]
persist = false
%s`, socket, filepath.Join(filepath.Dir(socket), "admin.sock"), filepath.Join(filepath.Dir(socket), "containerd.sock"), filepath.Dir(socket), metrics, policies)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	// Rename: the poller must never see a half-written file.
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startServe(t *testing.T, policies string, extraArgs ...string) *served {
	t.Helper()
	dir, err := os.MkdirTemp("", "pg-serve-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &served{t: t, dir: dir, config: filepath.Join(dir, "config.toml"), socket: filepath.Join(dir, "pg.sock"),
		metrics: freePort(t), logs: &syncBuffer{}, done: make(chan int, 1)}
	writeConfig(t, s.config, s.socket, s.metrics, policies)
	s.upstream = startStubContainerd(t, filepath.Join(dir, "containerd.sock"))
	ctx, cancel := context.WithCancel(context.Background())
	args := append([]string{"--config", s.config}, extraArgs...)
	go func() { s.done <- runServe(ctx, args, io.Discard, s.logs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			t.Error("serve did not stop")
		}
	})
	s.waitFor("serving", func() bool { return strings.Contains(s.logs.String(), "pullguard serving") })
	return s
}

func (s *served) waitFor(what string, cond func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			s.t.Fatalf("timed out waiting for %s; logs:\n%s", what, s.logs.String())
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}

// pullCode pulls an image through the proxy and returns the status code.
func (s *served) pullCode() (codes.Code, string) {
	s.t.Helper()
	conn, err := grpc.NewClient("unix://"+s.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		s.t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = runtimeapi.NewImageServiceClient(conn).PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "127.0.0.1:5000/app:v1"}})
	st := status.Convert(err)
	return st.Code(), st.Message()
}

func (s *served) policyInForce(admitted bool) func() bool {
	return func() bool {
		code, _ := s.pullCode()
		if admitted {
			return code == codes.Unavailable // forwarded to the absent containerd
		}
		return code == codes.Unknown
	}
}

func TestServeReloadsOnChangeAndKeepsLastGoodConfig(t *testing.T) {
	s := startServe(t, denyAll, "--reload-interval", "50ms")
	if code, msg := s.pullCode(); code != codes.Unknown || !strings.HasPrefix(msg, "SignatureValidationFailed: ") {
		t.Fatalf("deny-all policy: %v %q", code, msg)
	}

	writeConfig(t, s.config, s.socket, s.metrics, admitAll)
	s.waitFor("the admit-all policy to take effect", s.policyInForce(true))

	// A broken config is rejected; the admit-all one stays in force.
	if err := os.WriteFile(s.config, []byte("[server]\nsocket = \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.waitFor("the rejection to be logged", func() bool {
		return strings.Contains(s.logs.String(), "config reload rejected; the last good config stays in force")
	})
	if code, msg := s.pullCode(); code != codes.Unavailable {
		t.Fatalf("after a rejected reload the pull got %v %q, want the last good (admit-all) policy", code, msg)
	}
	// Rejected once, not at every poll: let several 50 ms polls pass (a
	// negative assertion needs time to pass; nothing is synchronised on it).
	time.Sleep(300 * time.Millisecond)
	if n := strings.Count(s.logs.String(), "config reload rejected"); n != 1 {
		t.Errorf("rejection logged %d times, want once", n)
	}

	resp, err := http.Get("http://" + s.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`pullguard_config_reloads_total{result="ok"} 1`, `pullguard_config_reloads_total{result="rejected"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// Unknown keys are rejected by name.
	writeConfig(t, s.config, s.socket, s.metrics, denyAll+"\nbogus_key = 1\n")
	s.waitFor("the unknown key to be rejected by name", func() bool { return strings.Contains(s.logs.String(), "bogus_key") })
	if code, _ := s.pullCode(); code != codes.Unavailable {
		t.Fatalf("config with an unknown key took effect: %v", code)
	}
}

func TestServeReloadsOnSIGHUP(t *testing.T) {
	s := startServe(t, denyAll, "--reload-interval", "0")
	writeConfig(t, s.config, s.socket, s.metrics, admitAll)
	// With polling off, nothing changes until SIGHUP.
	if code, _ := s.pullCode(); code != codes.Unknown {
		t.Fatalf("config changed without SIGHUP or polling: %v", code)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	s.waitFor("SIGHUP reload", s.policyInForce(true))
}

func TestServeHealthReadyAndMetrics(t *testing.T) {
	s := startServe(t, denyAll)
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + s.metrics + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with no containerd = %d %q, want 503", code, body)
	}
	s.pullCode()
	// A connection that cannot reach containerd is an upstream error.
	s.stopUpstream()
	conn, err := grpc.NewClient("unix://"+s.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := runtimeapi.NewImageServiceClient(conn).ImageFsInfo(context.Background(), &runtimeapi.ImageFsInfoRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("ImageFsInfo with no containerd: %v, want Unavailable", err)
	}
	// Runtime calls never cross pullguard.
	if _, err := runtimeapi.NewRuntimeServiceClient(conn).Version(context.Background(), &runtimeapi.VersionRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("Version on pullguard's socket: %v, want Unimplemented", err)
	}
	_, body := get("/metrics")
	for _, want := range []string{
		`pullguard_decisions_total{category="SignatureValidationFailed",namespace="",op="pull",verdict="deny"} 1`,
		"pullguard_decision_duration_seconds_bucket",
		`pullguard_upstream_errors_total{code="Unavailable",method="/runtime.v1.ImageService/ImageFsInfo"} 1`,
		"pullguard_facts_cache_hits_total",
		`pullguard_build_info{goversion="go`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestServeRemovesSocketOnShutdown(t *testing.T) {
	dir, err := os.MkdirTemp("", "pg-serve-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cfgPath, sock := filepath.Join(dir, "config.toml"), filepath.Join(dir, "pg.sock")
	writeConfig(t, cfgPath, sock, "", denyAll)
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- runServe(ctx, []string{"--config", cfgPath}, io.Discard, logs) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "pullguard serving") {
		if time.Now().After(deadline) {
			t.Fatalf("not serving: %s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	st, err := os.Stat(sock)
	if err != nil || st.Mode().Perm() != 0o660 {
		t.Fatalf("socket %v mode %v, want 0660", err, st)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("serve exited %d: %s", code, logs.String())
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind after shutdown: %v", err)
	}
}

func TestValidateConfigAndCheckExitCodes(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	writeConfig(t, good, filepath.Join(dir, "s.sock"), "", admitAll)
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[server]\nsockett = \"x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"validate-config", good}, &out, &errb); code != 0 {
		t.Fatalf("good config: exit %d: %s", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"validate-config", bad}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "sockett") {
		t.Fatalf("bad config: exit %d: %q (want 1 and the key named)", code, errb.String())
	}

	out.Reset()
	if code := run([]string{"check", "--config", good, "--namespace", "team-a", "nginx"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "verdict:   admit") {
		t.Fatalf("check admit: exit %d: %s", code, out.String())
	}
	locked := filepath.Join(dir, "locked.toml")
	writeConfig(t, locked, filepath.Join(dir, "s.sock"), "", denyAll)
	out.Reset()
	if code := run([]string{"check", "--config", locked, "nginx"}, &out, &errb); code != 1 || !strings.Contains(out.String(), "message:   SignatureValidationFailed: ") {
		t.Fatalf("check deny: exit %d: %s", code, out.String())
	}
	if code := run([]string{"check", "--config", locked, "Not::An/Image"}, &out, &errb); code != 2 {
		t.Fatalf("check malformed image: exit %d, want 2", code)
	}
}

// TestServeAdminSocket: the operations endpoints are served on a root-only unix socket, which
// the installer waits on and `pullguard status` reads, with no TCP port configured.
func TestServeAdminSocket(t *testing.T) {
	s := startServe(t, denyAll)
	admin := filepath.Join(s.dir, "admin.sock")
	fi, err := os.Stat(admin)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket mode %o, want 0600", fi.Mode().Perm())
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", admin)
	}}}
	get := func(path string) (int, string) {
		resp, err := client.Get("http://pullguard" + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz on the admin socket = %d", code)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "containerd not ready") {
		t.Errorf("/readyz with the stand-in containerd = %d %q, want 503 naming containerd", code, body)
	}
	if code, body := get(running.StatusPath); code != http.StatusNotFound || !strings.Contains(body, "pull-only") {
		t.Errorf("%s in pull-only mode = %d %q, want 404 saying why", running.StatusPath, code, body)
	}
	var out, errb bytes.Buffer
	if code := runStatus(context.Background(), []string{"--socket", admin}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "pull-only") {
		t.Errorf("pullguard status in pull-only mode: exit %d, want 2 with the reason: %s%s", code, out.String(), errb.String())
	}
}

// TestServeNotifiesSystemd: under systemd (Type=notify, WatchdogSec) serve says READY=1 once it
// serves, feeds the watchdog from its loop, and says STOPPING=1 when it drains.
func TestServeNotifiesSystemd(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "200000") // 200ms: pinged every 100ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	got := make(chan string, 64)
	go func() {
		buf := make([]byte, 512)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			got <- string(buf[:n])
		}
	}()
	s := startServe(t, denyAll)
	want := map[string]bool{"READY=1": false, "WATCHDOG=1": false}
	deadline := time.After(10 * time.Second)
	for !want["READY=1"] || !want["WATCHDOG=1"] {
		select {
		case m := <-got:
			want[m] = true
		case <-deadline:
			t.Fatalf("systemd was told %v; logs:\n%s", want, s.logs.String())
		}
	}
}
