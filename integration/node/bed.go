package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pullguard/pullguard/integration/testbed"
)

// Options configures Start.
type Options struct {
	Logger *slog.Logger // nil: discard
	// Keep leaves the directory (logs, the node's root) after Close; env PULLGUARD_NODE_KEEP=1 too.
	Keep bool
}

// Bed is a registry, a control plane and one node, under Dir (/tmp/pgnode-PID-N; the node, its
// cgroups and the directory share that name).
type Bed struct {
	Dir      string
	Tools    Tools
	Registry *testbed.Registry
	Pause    testbed.PushedImage // the sandbox image containerd and kubelet are configured with
	Busybox  testbed.PushedImage // runnable: sh, sleep, echo, ...
	Cluster  *Cluster
	Node     *Node
	Log      *slog.Logger

	keep        bool
	linksBefore []string
	closed      bool
}

// Start brings the bed up and returns once the node is registered and Ready. On error
// everything started is stopped.
func Start(ctx context.Context, opts Options) (_ *Bed, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("start node bed: needs root (systemd-nspawn, cgroups, mounts)")
	}
	tools, err := FindTools()
	if err != nil {
		return nil, err
	}
	if err := sweepStale(ctx); err != nil {
		log.Warn("leftovers of an earlier run", "err", err)
	}
	links, err := linkNames()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("/tmp", fmt.Sprintf("pgnode-%d-", os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("start node bed: %w", err)
	}
	b := &Bed{Dir: dir, Tools: tools, Log: log, linksBefore: links, keep: opts.Keep || os.Getenv("PULLGUARD_NODE_KEEP") == "1"}
	defer func() {
		if err != nil {
			if cerr := b.Close(context.WithoutCancel(ctx)); cerr != nil {
				log.Warn("cleanup after failed start", "err", cerr)
			}
		}
	}()
	start := time.Now()
	pauseBin := filepath.Join(dir, "bin", "pause")
	build := exec.CommandContext(ctx, "go", "build", "-o", pauseBin, "./integration/testbed/pause")
	build.Dir, build.Env = tools.Repo, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build pause: %w\n%s", err, out)
	}
	if b.Registry, err = testbed.StartRegistry(ctx, tools.Testbed, filepath.Join(dir, "reg"), nil); err != nil {
		return nil, err
	}
	pause, err := testbed.PauseImage(pauseBin)
	if err != nil {
		return nil, err
	}
	if b.Pause, err = b.Registry.Push(ctx, "testbed/pause:1", pause); err != nil {
		return nil, err
	}
	bb, err := testbed.RunnableImage(tools.Testbed.Busybox, "busybox")
	if err != nil {
		return nil, err
	}
	if b.Busybox, err = b.Registry.Push(ctx, "testbed/busybox:1", bb); err != nil {
		return nil, err
	}
	log.Info("registry up", "host", b.Registry.Host, "took", time.Since(start).Round(time.Millisecond))
	if b.Cluster, err = StartCluster(ctx, tools, filepath.Join(dir, "kube")); err != nil {
		return nil, err
	}
	log.Info("control plane up", "url", b.Cluster.URL, "took", time.Since(start).Round(time.Millisecond))
	if b.Node, err = StartNode(ctx, NodeOptions{
		Name: filepath.Base(dir), Dir: filepath.Join(dir, "node"), Tools: tools, Cluster: b.Cluster,
		RegistryHost: b.Registry.Host, SandboxImage: b.Pause.Ref,
	}); err != nil {
		return nil, err
	}
	log.Info("node booted", "name", b.Node.Name, "took", time.Since(start).Round(time.Millisecond))
	if err := b.WaitNodeReady(ctx, 2*time.Minute); err != nil {
		return nil, err
	}
	log.Info("node Ready", "name", b.Node.Name, "took", time.Since(start).Round(time.Millisecond))
	return b, nil
}

// WaitNodeReady waits for the node's Ready condition to be True.
func (b *Bed) WaitNodeReady(ctx context.Context, timeout time.Duration) error {
	return poll(ctx, timeout, "node "+b.Node.Name+" Ready", func(ctx context.Context) error {
		n, err := b.Cluster.Admin.CoreV1().Nodes().Get(ctx, b.Node.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				if c.Status == corev1.ConditionTrue {
					return nil
				}
				return fmt.Errorf("condition Ready=%s: %s: %s", c.Status, c.Reason, c.Message)
			}
		}
		return errors.New("no Ready condition yet")
	})
}

// Diagnostics is what to print when a test fails: the node's units and the control plane's
// log tails.
func (b *Bed) Diagnostics(ctx context.Context) string {
	var s strings.Builder
	if b.Node != nil {
		for _, u := range []string{"kubelet", "containerd", "pullguard"} {
			fmt.Fprintf(&s, "--- journal of %s on the node:\n%s\n", u, b.Node.Journal(ctx, u, 60))
		}
	}
	if b.Cluster != nil {
		for _, f := range []string{"kube-controller-manager.log", "kube-scheduler.log"} {
			fmt.Fprintf(&s, "--- %s:\n%s\n", f, tailFile(filepath.Join(b.Cluster.Dir, f), 2000))
		}
	}
	return s.String()
}

// Close stops the node, the control plane and the registry, and removes the directory
// (unless kept).
func (b *Bed) Close(ctx context.Context) error {
	if b.closed {
		return nil
	}
	b.closed = true
	var errs []error
	if b.Node != nil {
		if err := b.Node.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if b.Cluster != nil {
		b.Cluster.Stop()
	}
	if b.Registry != nil {
		if err := b.Registry.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop registry: %w", err))
		}
	}
	if b.keep {
		b.Log.Info("node bed kept", "dir", b.Dir)
	} else if err := os.RemoveAll(b.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", b.Dir, err))
	}
	return errors.Join(errs...)
}

// Leftovers lists what the bed left on the machine after Close: processes in the node's
// cgroups or started from its directory, mounts under it, the node's cgroups, network devices
// that were not there before, and nspawn's runtime entries for the node. Empty means clean.
func (b *Bed) Leftovers() ([]string, error) {
	var out []string
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		cg, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "cgroup"))
		cmdline, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		root, _ := os.Readlink(filepath.Join("/proc", p.Name(), "root"))
		cmd := strings.ReplaceAll(string(cmdline), "\x00", " ")
		if strings.Contains(string(cg), "/"+b.Node.CgroupName) || strings.Contains(cmd, b.Dir) || strings.HasPrefix(root, b.Dir) {
			out = append(out, fmt.Sprintf("process %d: %s", pid, cmd))
		}
	}
	mounts, err := mountedUnder(b.Dir)
	if err != nil {
		return nil, err
	}
	for _, m := range mounts {
		out = append(out, "mount "+m)
	}
	for _, cg := range b.Node.cgroups {
		if _, err := os.Stat(cg); err == nil {
			out = append(out, "cgroup "+cg)
		}
	}
	links, err := linkNames()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if !slices.Contains(b.linksBefore, l) {
			out = append(out, "network device "+l)
		}
	}
	for _, p := range append(b.Node.nspawnEntries(), "/run/systemd/nspawn/unix-export/"+b.Node.Name) {
		if _, err := os.Lstat(p); err == nil {
			out = append(out, "nspawn runtime entry "+p)
		}
	}
	if _, err := os.Stat(b.Dir); err == nil && !b.keep {
		out = append(out, "directory "+b.Dir)
	}
	return out, nil
}

func linkNames() ([]string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list network devices: %w", err)
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	return names, nil
}
