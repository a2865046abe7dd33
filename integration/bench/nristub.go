package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/pullguard/pullguard/integration/testbed"
	"github.com/pullguard/pullguard/plugin/nri"
)

// The trivial validator is the floor of pullguard's gate: a plugin registered under pullguard's
// name and index, so containerd's required_plugins is satisfied, that admits every create at
// once (but those named to be refused, see refusePrefix). A create it validates pays everything containerd's NRI costs a required validator (the
// ttrpc round trip, the plugin's wake-up) and nothing of pullguard's decision. It runs as its own
// process, as pullguard does.

// stubRegistered is what the stub process prints once containerd has synchronized it.
const stubRegistered = "nri stub registered"

// refusePrefix names the containers the trivial validator refuses, at once: what a refusal costs
// containerd itself, the floor of pullguard's.
const refusePrefix = "refuse-"

// trivialValidator subscribes to the two events it needs: Synchronize (registration done) and
// ValidateContainerAdjustment (the gate).
type trivialValidator struct{}

func (trivialValidator) Synchronize(context.Context, []*api.PodSandbox, []*api.Container) ([]*api.ContainerUpdate, error) {
	fmt.Println(stubRegistered)
	return nil, nil
}

func (trivialValidator) ValidateContainerAdjustment(_ context.Context, req *api.ValidateContainerAdjustmentRequest) error {
	if strings.HasPrefix(req.GetContainer().GetName(), refusePrefix) {
		return errors.New("refused by the trivial validator")
	}
	return nil
}

// serveNRIStub runs in the stub process until containerd closes the connection or the process is
// killed.
func serveNRIStub(socket string) error {
	s, err := stub.New(trivialValidator{},
		stub.WithPluginName(testbed.NRIPlugin),
		stub.WithPluginIdx(nri.DefaultIndex),
		stub.WithSocketPath(socket),
		stub.WithLogger(stderrLogger{}),
	)
	if err != nil {
		return fmt.Errorf("nri stub: %w", err)
	}
	return s.Run(context.Background())
}

// stderrLogger keeps the stub's own chatter out of the way; warnings and errors still show.
type stderrLogger struct{}

func (stderrLogger) Debugf(context.Context, string, ...any) {}
func (stderrLogger) Infof(context.Context, string, ...any)  {}
func (stderrLogger) Warnf(_ context.Context, f string, a ...any) {
	fmt.Fprintf(os.Stderr, "nri stub: "+f+"\n", a...)
}
func (stderrLogger) Errorf(_ context.Context, f string, a ...any) {
	fmt.Fprintf(os.Stderr, "nri stub: "+f+"\n", a...)
}

// startNRIStub starts this program again as the trivial validator on containerd's NRI socket
// and waits until containerd has it registered. stop kills it and waits for the exit.
func startNRIStub(ctx context.Context, socket string) (stop func(), err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start nri stub: %w", err)
	}
	cmd := exec.Command(self, "-nri-stub", socket)
	cmd.Stderr = os.Stderr
	// Gone with the benchmark, however it ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start nri stub: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start nri stub: %w", err)
	}
	stop = func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	registered, closed := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(closed) // its stdout ends when it exits
		sc := bufio.NewScanner(out)
		signalled := false
		for sc.Scan() {
			if !signalled && strings.TrimSpace(sc.Text()) == stubRegistered {
				close(registered)
				signalled = true
			}
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	select {
	case <-registered:
		return stop, nil
	case <-closed:
		stop()
		return nil, fmt.Errorf("nri stub on %s exited before it was registered", socket)
	case <-ctx.Done():
		stop()
		return nil, errors.Join(fmt.Errorf("nri stub on %s was not registered", socket), ctx.Err())
	}
}
