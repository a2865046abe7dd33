package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// process is a program the bed started on the machine (nspawn, the controllers), logging to a
// file. done closes when it has exited.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // Wait's result, once done is closed
}

// startProcess starts argv with its output in logPath. If the test binary dies, the kernel
// sends the process deathSignal (nspawn turns SIGTERM into a clean shutdown of its node).
func startProcess(name, logPath string, env []string, deathSignal syscall.Signal, argv ...string) (*process, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: log file: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSignal}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// The death signal is tied to the thread that forked the child, not to the process:
		// that thread must live as long as the child, or Go could retire it and the child
		// would get the signal in the middle of a test.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig, waits up to grace, then kills. It reports whether the process needed the kill.
func (p *process) stop(sig syscall.Signal, grace time.Duration) (killed bool) {
	if p == nil || p.exited() {
		return false
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return false
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return true
}

func (p *process) logTail(n int) string { return tailFile(p.log, n) }

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// result is the outcome of a command run to completion.
type result struct {
	Args   []string
	Stdout string
	Stderr string
	Err    error
}

func (r result) String() string {
	s := strings.Join(r.Args, " ")
	if r.Err != nil {
		s += ": " + r.Err.Error()
	}
	if out := strings.TrimSpace(r.Stdout + r.Stderr); out != "" {
		s += "\n" + out
	}
	return s
}

func run(ctx context.Context, argv ...string) result {
	var out, errb strings.Builder
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return result{Args: argv, Stdout: out.String(), Stderr: errb.String(), Err: err}
}

// poll calls cond until it returns nil, the deadline passes or ctx ends; the error names what
// was awaited and cond's last error.
func poll(ctx context.Context, timeout time.Duration, what string, cond func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	interval := 50 * time.Millisecond
	for {
		err := cond(ctx)
		if err == nil {
			return nil
		}
		if errors.Is(err, errStop) {
			return fmt.Errorf("%s: %w", what, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after %s: %w", what, timeout, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %v)", what, ctx.Err(), err)
		case <-time.After(interval):
		}
		if interval < 500*time.Millisecond {
			interval *= 2
		}
	}
}

// errStop, wrapped by a poll condition, ends the wait at once: what it waits for cannot happen.
var errStop = errors.New("gave up")
