package installer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullguard/pullguard/config"
	"github.com/pullguard/pullguard/daemonset/hoststate"
	"github.com/pullguard/pullguard/plugin/nri"
)

// fakeNode stands in for systemd, containerd and the pullguard service on
// a host root, since systemd is not PID 1 where these tests run. The real
// CRIProber talks to it over unix sockets under the root:
//
//   - containerd answers CRI Version on its socket, and "loads" its config
//     (read with the reader serve uses) when it is restarted;
//   - pullguard, once started, reads the config install wrote, serves
//     ImageFsInfo on its CRI socket and /readyz on its admin socket, which
//     is 200 only when, in enforce mode, the config containerd loaded
//     requires the plugin on the socket pullguard was given (as its NRI
//     plugin registering, and serve's own start-up check, need).
type fakeNode struct {
	t       *testing.T
	root    hoststate.Root
	runtime RuntimeInfo // containerd's answer to Version

	broken   bool             // pullguard "starts" but never becomes ready
	fail     map[string]error // "restart kubelet.service" -> error, every time
	failOnce map[string]error // the same, once

	mu     sync.Mutex
	calls  []string
	loaded *nri.ContainerdNRI // containerd's config as of its last start; nil: none requiring anything
	ctd    *grpc.Server
	pg     *fakePullguard
	// kubeletSawReady records, at each kubelet restart, whether pullguard
	// was ready: kubelet must never be pointed at a pullguard that is not.
	kubeletSawReady []bool
	// containerdRequired records, at each containerd restart, whether the
	// config it came up with requires pullguard.
	containerdRequired []bool
}

type fakePullguard struct {
	cfg   *config.Config
	grpc  *grpc.Server
	admin *http.Server
}

// newFakeNode starts containerd answering as rt on the host's
// /run/containerd/containerd.sock (where /var/run/... also leads).
func newFakeNode(t *testing.T, root hoststate.Root, rt RuntimeInfo) *fakeNode {
	return newFakeNodeAt(t, root, rt, "/run/containerd/containerd.sock")
}

func newFakeNodeAt(t *testing.T, root hoststate.Root, rt RuntimeInfo, runtimeSocket string) *fakeNode {
	t.Helper()
	f := &fakeNode{t: t, root: root, runtime: rt, fail: map[string]error{}, failOnce: map[string]error{}}
	if err := f.loadContainerdConfig(); err != nil {
		t.Fatalf("fake containerd: %v", err)
	}
	if runtimeSocket != "" {
		l := listenUnix(t, root.Path(runtimeSocket))
		f.ctd = grpc.NewServer()
		runtimeapi.RegisterRuntimeServiceServer(f.ctd, fakeRuntime{f: f})
		go f.ctd.Serve(l)
	}
	t.Cleanup(func() {
		f.stopPullguard()
		if f.ctd != nil {
			f.ctd.Stop()
		}
	})
	return f
}

func listenUnix(t *testing.T, p string) net.Listener {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(p)
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatalf("listen %s: %v", p, err)
	}
	return l
}

type fakeRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	f *fakeNode
}

func (r fakeRuntime) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: r.f.runtime.Name, RuntimeVersion: r.f.runtime.Version, RuntimeApiVersion: "v1"}, nil
}

type fakeImages struct {
	runtimeapi.UnimplementedImageServiceServer
}

func (fakeImages) ImageFsInfo(context.Context, *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	return &runtimeapi.ImageFsInfoResponse{}, nil
}

// loadContainerdConfig is containerd (re)starting: it reads its config, and
// fails to start on one it cannot read (a missing plain import, broken
// TOML). Without a config file it runs on its defaults.
func (f *fakeNode) loadContainerdConfig() error {
	c, err := nri.ReadContainerdNRIFS(os.DirFS(string(f.root)), DefaultContainerdConfig)
	if err != nil {
		if _, serr := os.Stat(f.root.Path(DefaultContainerdConfig)); errors.Is(serr, fs.ErrNotExist) {
			c, err = nil, nil
		} else {
			return fmt.Errorf("containerd does not start: %w", err)
		}
	}
	f.loaded = c
	return nil
}

func (f *fakeNode) record(verb, unit string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	call := verb
	if unit != "" {
		call += " " + unit
	}
	f.calls = append(f.calls, call)
	if verb == "restart" && unit == KubeletUnit {
		f.kubeletSawReady = append(f.kubeletSawReady, f.readyLocked() == nil)
	}
	if err, ok := f.failOnce[call]; ok {
		delete(f.failOnce, call)
		return err
	}
	return f.fail[call]
}

func (f *fakeNode) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// readyLocked is pullguard's /readyz.
func (f *fakeNode) readyLocked() error {
	switch {
	case f.pg == nil:
		return errors.New("pullguard is not running")
	case f.broken:
		return errors.New("pullguard is crash-looping")
	case f.pg.cfg.NRI.Mode == config.NRIPullOnly:
		return nil
	case f.loaded == nil || !f.loaded.Requires(f.pg.cfg.NRI.PluginName, f.pg.cfg.NRI.PluginIndex):
		return errors.New("containerd does not require pullguard: serve refuses to start")
	case normEndpoint(firstNonEmpty(f.loaded.SocketPath, defaultNRISocket)) != normEndpoint(f.pg.cfg.NRI.Socket):
		return fmt.Errorf("pullguard dials NRI at %s, containerd listens at %s", f.pg.cfg.NRI.Socket, f.loaded.SocketPath)
	}
	return nil
}

func (f *fakeNode) startPullguard() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pg != nil {
		return nil
	}
	data, err := os.ReadFile(f.root.Path(hoststate.ConfigPath))
	var cfg *config.Config
	if err == nil {
		cfg, err = config.Parse(data, hoststate.ConfigPath)
	}
	if err != nil {
		// serve would exit; systemd would keep restarting it.
		f.t.Logf("fake pullguard does not start: %v", err)
		return nil
	}
	pg := &fakePullguard{cfg: cfg, grpc: grpc.NewServer()}
	runtimeapi.RegisterImageServiceServer(pg.grpc, fakeImages{})
	go pg.grpc.Serve(listenUnix(f.t, f.root.Path(normEndpoint(cfg.Server.Socket))))
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		f.mu.Lock()
		err := f.readyLocked()
		f.mu.Unlock()
		if err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	pg.admin = &http.Server{Handler: mux}
	go pg.admin.Serve(listenUnix(f.t, f.root.Path(normEndpoint(cfg.Server.AdminSocket))))
	f.pg = pg
	return nil
}

func (f *fakeNode) stopPullguard() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pg != nil {
		f.pg.grpc.Stop()
		_ = f.pg.admin.Close()
		f.pg = nil
	}
}

func (f *fakeNode) DaemonReload(ctx context.Context) error { return f.record("daemon-reload", "") }
func (f *fakeNode) Enable(ctx context.Context, unit string) error {
	return f.record("enable", unit)
}
func (f *fakeNode) Disable(ctx context.Context, unit string) error {
	return f.record("disable", unit)
}
func (f *fakeNode) Start(ctx context.Context, unit string) error {
	if err := f.record("start", unit); err != nil {
		return err
	}
	if unit == hoststate.UnitName {
		return f.startPullguard()
	}
	return nil
}
func (f *fakeNode) Restart(ctx context.Context, unit string) error {
	if err := f.record("restart", unit); err != nil {
		return err
	}
	switch unit {
	case hoststate.UnitName:
		f.stopPullguard()
		return f.startPullguard()
	case ContainerdUnit:
		f.mu.Lock()
		defer f.mu.Unlock()
		if err := f.loadContainerdConfig(); err != nil {
			return err
		}
		f.containerdRequired = append(f.containerdRequired, f.loaded != nil && f.loaded.Requires("pullguard", "10"))
	}
	return nil
}
func (f *fakeNode) Stop(ctx context.Context, unit string) error {
	if err := f.record("stop", unit); err != nil {
		return err
	}
	if unit == hoststate.UnitName {
		f.stopPullguard()
	}
	return nil
}
