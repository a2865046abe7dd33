package installer

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
)

// ServiceManager controls the host's services. The real one is Systemd;
// tests use a fake because systemd is not PID 1 where they run.
type ServiceManager interface {
	DaemonReload(ctx context.Context) error
	Enable(ctx context.Context, unit string) error
	Disable(ctx context.Context, unit string) error
	Start(ctx context.Context, unit string) error
	Restart(ctx context.Context, unit string) error
	Stop(ctx context.Context, unit string) error
}

// CommandRunner runs a host command and returns its combined output.
type CommandRunner func(ctx context.Context, name string, args ...string) ([]byte, error)

// Systemd runs systemctl in the host's namespaces: chroot into the host root
// (so the host's own nsenter and systemctl run, nothing is needed in the
// image), then nsenter PID 1's mount/uts/ipc/net/pid namespaces, because
// systemctl refuses to act from inside a chroot. Needs a privileged pod with
// hostPID.
type Systemd struct {
	HostRoot string
	// Run executes the command; nil means ChrootRunner(HostRoot).
	Run CommandRunner
}

// Argv is the host command line for one systemctl call.
func (s Systemd) Argv(args ...string) []string {
	return append([]string{"nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--", "systemctl"}, args...)
}

func (s Systemd) systemctl(ctx context.Context, args ...string) error {
	run := s.Run
	if run == nil {
		run = ChrootRunner(s.HostRoot)
	}
	argv := s.Argv(args...)
	out, err := run(ctx, argv[0], argv[1:]...)
	if err != nil {
		if msg := bytes.TrimSpace(out); len(msg) > 0 {
			return fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, msg)
		}
		return fmt.Errorf("systemctl %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

func (s Systemd) DaemonReload(ctx context.Context) error { return s.systemctl(ctx, "daemon-reload") }
func (s Systemd) Enable(ctx context.Context, unit string) error {
	return s.systemctl(ctx, "enable", unit)
}
func (s Systemd) Disable(ctx context.Context, unit string) error {
	return s.systemctl(ctx, "disable", unit)
}
func (s Systemd) Start(ctx context.Context, unit string) error {
	return s.systemctl(ctx, "start", unit)
}
func (s Systemd) Restart(ctx context.Context, unit string) error {
	return s.systemctl(ctx, "restart", unit)
}
func (s Systemd) Stop(ctx context.Context, unit string) error { return s.systemctl(ctx, "stop", unit) }

// ChrootRunner runs commands with the host root as their root directory and
// the host's PATH layout. hostRoot "/" runs them directly.
func ChrootRunner(hostRoot string) CommandRunner {
	return func(ctx context.Context, name string, args ...string) ([]byte, error) {
		env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
		if hostRoot == "" || hostRoot == "/" {
			cmd := exec.CommandContext(ctx, name, args...)
			cmd.Env = env
			return cmd.CombinedOutput()
		}
		// The image has no nsenter or systemctl: resolve the name in the host
		// root and give exec an absolute path, which the child resolves after
		// chroot.
		p, err := lookPathIn(hostRoot, name)
		if err != nil {
			return nil, err
		}
		cmd := exec.CommandContext(ctx, p, args...)
		cmd.Env = env
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: hostRoot}
		cmd.Dir = "/"
		return cmd.CombinedOutput()
	}
}
