package installer

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullguard/pullguard/daemonset/hoststate"
)

// fakeServices stands in for systemd, which is not PID 1 on the machines
// these tests run on. Starting pullguard.service starts a real gRPC CRI
// server on the socket under the host root, so the real CRIProber is what
// decides readiness.
type fakeServices struct {
	t      *testing.T
	root   hoststate.Root
	socket string // host path

	broken bool             // pullguard "starts" but never listens
	fail   map[string]error // "restart kubelet.service" -> error

	mu    sync.Mutex
	calls []string
	// kubeletSeen records, at each kubelet restart, whether pullguard was
	// serving — kubelet must never be pointed at a dead socket.
	kubeletSeenServing []bool
	srv                *grpc.Server
}

type fakeRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
}

func (fakeRuntime) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "fake-pullguard", RuntimeApiVersion: "v1"}, nil
}

func newFakeServices(t *testing.T, root hoststate.Root) *fakeServices {
	f := &fakeServices{t: t, root: root, socket: hoststate.DefaultSocket, fail: map[string]error{}}
	t.Cleanup(f.stopServer)
	return f
}

func (f *fakeServices) record(verb, unit string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	call := verb
	if unit != "" {
		call += " " + unit
	}
	f.calls = append(f.calls, call)
	if verb == "restart" && unit == KubeletUnit {
		f.kubeletSeenServing = append(f.kubeletSeenServing, f.srv != nil)
	}
	return f.fail[call]
}

func (f *fakeServices) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeServices) startServer() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.srv != nil || f.broken {
		return nil
	}
	p := f.root.Path(f.socket)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	_ = os.Remove(p)
	l, err := net.Listen("unix", p)
	if err != nil {
		return fmt.Errorf("fake pullguard listen: %w", err)
	}
	f.srv = grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(f.srv, fakeRuntime{})
	go f.srv.Serve(l)
	return nil
}

func (f *fakeServices) stopServer() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.srv != nil {
		f.srv.Stop()
		f.srv = nil
	}
}

func (f *fakeServices) DaemonReload(ctx context.Context) error { return f.record("daemon-reload", "") }
func (f *fakeServices) Enable(ctx context.Context, unit string) error {
	return f.record("enable", unit)
}
func (f *fakeServices) Disable(ctx context.Context, unit string) error {
	return f.record("disable", unit)
}
func (f *fakeServices) Start(ctx context.Context, unit string) error {
	if err := f.record("start", unit); err != nil {
		return err
	}
	if unit == hoststate.UnitName {
		return f.startServer()
	}
	return nil
}
func (f *fakeServices) Restart(ctx context.Context, unit string) error {
	if err := f.record("restart", unit); err != nil {
		return err
	}
	if unit == hoststate.UnitName {
		f.stopServer()
		return f.startServer()
	}
	return nil
}
func (f *fakeServices) Stop(ctx context.Context, unit string) error {
	if err := f.record("stop", unit); err != nil {
		return err
	}
	if unit == hoststate.UnitName {
		f.stopServer()
	}
	return nil
}
