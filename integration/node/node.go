package node

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pullguard/pullguard/integration/kube"
)

// NodeOptions configures StartNode.
type NodeOptions struct {
	Name    string // machine name, hostname and Kubernetes node name
	Dir     string // the node's directory on the machine; its root filesystem is Dir/root
	Tools   Tools
	Cluster *Cluster
	// RegistryHost ("127.0.0.1:PORT") is reached over plain HTTP (containerd's certs.d).
	RegistryHost string
	// SandboxImage is containerd's pinned sandbox image and kubelet's pod infra image.
	SandboxImage string
}

// Node is a booted nspawn container: systemd as its PID 1, containerd and kubelet as units,
// sharing the machine's network and kernel. Its root is a plain directory on the machine, so
// its files can be read and compared from outside (Path).
type Node struct {
	Name        string
	Dir         string
	Root        string
	KubeletPort int
	HealthzPort int
	// CgroupName is the node's cgroup in every hierarchy, below the test's own cgroup there:
	// everything the node runs (pods included) lives below it.
	CgroupName string
	cgroups    []string // the node's cgroup directories, one per hierarchy
	nspawn     *process
	pid1       int
	tools      Tools
	rootLock   string // nspawn's lock file for Root
}

// Path is the machine's path of a file of the node.
func (n *Node) Path(p string) string { return filepath.Join(n.Root, p) }

// PID1 is the node's systemd, as the machine sees it.
func (n *Node) PID1() int { return n.pid1 }

// StartNode copies the root filesystem, writes the node's configuration, boots it and waits
// until systemd reports the system running (containerd and kubelet started). Registering with
// the API server is the bed's to wait for.
func StartNode(ctx context.Context, opts NodeOptions) (_ *Node, err error) {
	n := &Node{Name: opts.Name, Dir: opts.Dir, Root: filepath.Join(opts.Dir, "root"), CgroupName: opts.Name, tools: opts.Tools}
	defer func() {
		if err != nil {
			_ = n.Stop(context.WithoutCancel(ctx))
		}
	}()
	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("start node: %w", err)
	}
	// A copy per node: the node writes to its root, and the cached tree must stay pristine.
	// Not an overlay mount: containerd's overlayfs snapshots cannot live on overlayfs.
	if r := run(ctx, "cp", "-a", "--reflink=auto", opts.Tools.Rootfs, n.Root); r.Err != nil {
		return nil, fmt.Errorf("start node: copy root filesystem: %s", r)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(n.Root, &st); err != nil {
		return nil, fmt.Errorf("start node: %w", err)
	}
	n.rootLock = fmt.Sprintf("/run/systemd/nspawn/locks/inode-%d:%d", st.Dev, st.Ino)
	if err := n.writeConfig(ctx, opts); err != nil {
		return nil, fmt.Errorf("start node: %w", err)
	}
	if n.cgroups, err = createCgroups(n.CgroupName); err != nil {
		return nil, fmt.Errorf("start node: %w", err)
	}
	if err := n.boot(ctx); err != nil {
		return nil, fmt.Errorf("start node: %w", err)
	}
	return n, nil
}

func (n *Node) writeConfig(ctx context.Context, opts NodeOptions) error {
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	n.KubeletPort, n.HealthzPort = ports[0], ports[1]
	ctdCfg, err := containerdConfig(ctx, opts.Tools.Testbed.Containerd, opts.SandboxImage)
	if err != nil {
		return err
	}
	cert, key, err := opts.Cluster.ClientCert("system:node:"+opts.Name, "system:nodes")
	if err != nil {
		return err
	}
	kubeconfig := KubeconfigFor(opts.Cluster, cert, key)
	hosts, err := os.ReadFile(filepath.Join(n.Root, "etc/hosts"))
	if err != nil {
		return fmt.Errorf("read node /etc/hosts: %w", err)
	}
	files := map[string]string{
		"/etc/hostname": opts.Name + "\n",
		// Debian's way of naming the machine: kubelet then skips the loopback address (as
		// it must) and finds the node's address on the default route's interface, without a
		// DNS query.
		"/etc/hosts":     string(hosts) + "127.0.1.1\t" + opts.Name + "\n",
		ContainerdConfig: ctdCfg,
		ContainerdUnit:   containerdUnit,
		"/etc/containerd/certs.d/" + opts.RegistryHost + "/hosts.toml": hostsTOML(opts.RegistryHost),
		CNIConfig:                        cniConfig,
		"/etc/crictl.yaml":               "runtime-endpoint: unix://" + ContainerdSocket + "\nimage-endpoint: unix://" + ContainerdSocket + "\ntimeout: 10\n",
		KubeletUnit:                      kubeletUnit,
		KubeletDropIn:                    kubeletDropIn,
		KubeletConfig:                    kubeletConfig(n.KubeletPort, n.HealthzPort),
		KubeadmFlags:                     kubeadmFlags(opts.SandboxImage),
		KubeletKubeconfig:                string(kubeconfig),
		CACert:                           string(opts.Cluster.CAPEM()),
		"/usr/local/sbin/pgnode-prepare": prepareScript,
		"/etc/systemd/system/pgnode-prepare.service": prepareUnit,
		"/etc/systemd/system.conf.d/pgnode.conf":     systemdConf,
	}
	for k, v := range kubeletSysctls {
		files["/etc/pgnode/sysctl/"+k] = v + "\n"
	}
	if err := writeFiles(n.Root, files, map[string]os.FileMode{
		"/usr/local/sbin/pgnode-prepare": 0o755, KubeletKubeconfig: 0o600,
	}); err != nil {
		return err
	}
	// /var/log/journal makes the journal persistent: readable from the machine after the
	// node is gone (Journal).
	for _, d := range []string{"/etc/kubernetes/manifests", ContainerdDropInDir, "/var/log/journal"} {
		if err := os.MkdirAll(n.Path(d), 0o755); err != nil {
			return fmt.Errorf("node dir %s: %w", d, err)
		}
	}
	// systemctl enable, done by hand: the units are wanted by multi-user.target.
	wants := n.Path("/etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return err
	}
	for _, u := range []string{"containerd.service", "kubelet.service", "pgnode-prepare.service"} {
		if err := os.Symlink("/etc/systemd/system/"+u, filepath.Join(wants, u)); err != nil {
			return fmt.Errorf("enable %s: %w", u, err)
		}
	}
	return nil
}

// KubeconfigFor is a kubeconfig with an embedded client certificate, as kubeadm writes
// /etc/kubernetes/kubelet.conf.
func KubeconfigFor(c *Cluster, certPEM, keyPEM []byte) []byte {
	b64 := base64.StdEncoding.EncodeToString
	return kube.KubeconfigYAML(c.URL, c.CAPEM(), "client-certificate-data: "+b64(certPEM), "client-key-data: "+b64(keyPEM))
}

// boot starts systemd-nspawn inside the node's cgroups and waits for the system to be running.
func (n *Node) boot(ctx context.Context) error {
	var procs []string
	for _, cg := range n.cgroups {
		procs = append(procs, filepath.Join(cg, "cgroup.procs"))
	}
	args := []string{
		"/bin/sh", "-c",
		// Join the node's cgroups first, so that nspawn and all it starts live there.
		`for p in $PGNODE_CGROUP_PROCS; do echo $$ > "$p" || exit 1; done; exec "$@"`, "sh",
		n.tools.Nspawn, "--directory", n.Root, "--machine", n.Name,
		// No machined, no systemd on the machine: nspawn runs as a plain process.
		"--register=no", "--keep-unit",
		"--boot", "--console=passive", "--link-journal=no",
		// containerd and runc need every capability the machine gives.
		"--capability=all",
		// nspawn's seccomp filter refuses the keyring calls; runc creates a session keyring
		// for every container.
		"--system-call-filter=@keyring",
		// kubelet reads kernel messages (OOM kills) from it.
		"--bind-ro=/dev/kmsg",
	}
	for _, b := range []string{n.tools.Testbed.Containerd, n.tools.Testbed.Shim, n.tools.Testbed.Ctr, n.tools.Testbed.Crictl, n.tools.Kubelet} {
		args = append(args, "--bind-ro="+b+":"+binDir+"/"+filepath.Base(b))
	}
	env := append(os.Environ(),
		"PGNODE_CGROUP_PROCS="+strings.Join(procs, " "),
		// The machine's cgroups are v1 hierarchies: nspawn gives the node v1 too.
		"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=0")
	var err error
	n.nspawn, err = startProcess("systemd-nspawn", filepath.Join(n.Dir, "nspawn.log"), env, syscall.SIGTERM, args...)
	if err != nil {
		return err
	}
	if err := poll(ctx, 30*time.Second, "node's PID 1", func(context.Context) error {
		if n.nspawn.exited() {
			return fmt.Errorf("%w: systemd-nspawn exited: %v\n%s", errStop, n.nspawn.err, n.nspawn.logTail(3000))
		}
		pid, err := containerInit(n.nspawn.pid())
		if err != nil {
			return err
		}
		n.pid1 = pid
		return nil
	}); err != nil {
		return err
	}
	return poll(ctx, 90*time.Second, "node "+n.Name+" booted (systemctl is-system-running)", func(ctx context.Context) error {
		if n.nspawn.exited() {
			return fmt.Errorf("%w: systemd-nspawn exited: %v\n%s", errStop, n.nspawn.err, n.nspawn.logTail(3000))
		}
		r := n.Exec(ctx, "systemctl", "is-system-running")
		state := strings.TrimSpace(r.Stdout)
		switch state {
		case "running":
			return nil
		case "degraded":
			failed := n.Exec(ctx, "systemctl", "--failed", "--no-pager", "--no-legend")
			return fmt.Errorf("%w: node degraded: %s", errStop, failed.Stdout)
		}
		return fmt.Errorf("state %q", state)
	})
}

// containerInit finds the child of nspawn that runs in a PID namespace of its own.
func containerInit(nspawnPID int) (int, error) {
	self, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return 0, err
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", nspawnPID, nspawnPID))
	if err != nil {
		return 0, err
	}
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); err == nil && ns != self {
			return pid, nil
		}
	}
	return 0, errors.New("no child in a PID namespace of its own yet")
}

// Exec runs a command in the node's namespaces (as `machinectl shell` would). It runs outside
// the node's cgroups and seccomp filter: for inspecting and for admin commands (ctr, crictl,
// systemctl), not for workloads.
func (n *Node) Exec(ctx context.Context, argv ...string) result {
	return run(ctx, append([]string{"nsenter", "--target", strconv.Itoa(n.pid1), "--all", "--"}, argv...)...)
}

// Systemctl runs systemctl on the node and fails on a non-zero exit.
func (n *Node) Systemctl(ctx context.Context, args ...string) (string, error) {
	r := n.Exec(ctx, append([]string{"systemctl"}, args...)...)
	if r.Err != nil {
		return r.Stdout, fmt.Errorf("on node %s: %s", n.Name, r)
	}
	return r.Stdout, nil
}

// UnitProperty is one property of a unit (systemctl show -p NAME --value).
func (n *Node) UnitProperty(ctx context.Context, unit, prop string) (string, error) {
	out, err := n.Systemctl(ctx, "show", "--property", prop, "--value", unit)
	return strings.TrimSpace(out), err
}

// Journal is a unit's log on the node (for failure messages), read from the node's journal
// files with the machine's journalctl: it works after the node has stopped too.
func (n *Node) Journal(ctx context.Context, unit string, lines int) string {
	r := run(ctx, "journalctl", "--directory", n.Path("/var/log/journal"), "--no-pager", "-o", "short-precise", "-n", strconv.Itoa(lines), "-u", unit)
	return r.Stdout + r.Stderr
}

// Stop powers the node off (nspawn turns SIGTERM into a clean shutdown, so systemd stops
// kubelet and containerd and everything in the node's PID namespace ends), kills whatever
// is left in its cgroups and removes them. The root filesystem stays, for the caller to
// inspect or remove.
func (n *Node) Stop(ctx context.Context) error {
	var errs []error
	if n.nspawn != nil && !n.nspawn.exited() && n.pid1 != 0 {
		// A container's main process is PID 1 of its PID namespace and ignores the SIGTERM
		// that systemd's shutdown sends it unless it handles it (sleep does not): removing the
		// pods first kills them at once instead of after systemd's stop timeout. kubelet is
		// stopped first so that it does not start them again.
		stopCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
		if _, err := n.Systemctl(stopCtx, "stop", "kubelet"); err != nil {
			errs = append(errs, err)
		}
		if r := n.Exec(stopCtx, "crictl", "rmp", "--all", "--force"); r.Err != nil {
			errs = append(errs, fmt.Errorf("remove pods: %s", r))
		}
		cancel()
	}
	if n.nspawn != nil {
		if killed := n.nspawn.stop(syscall.SIGTERM, 90*time.Second); killed {
			errs = append(errs, fmt.Errorf("node %s did not power off within 90s: killed\n%s", n.Name, n.nspawn.logTail(2000)))
		}
	}
	if err := removeCgroups(ctx, n.cgroups); err != nil {
		errs = append(errs, err)
	}
	// nspawn removes its runtime entries when it exits on its own, not when it is killed.
	for _, p := range n.nspawnEntries() {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// nspawnEntries are the files nspawn keeps on the machine while the node runs: the mount
// propagation directory named after the machine, and the lock on the root directory (named
// after its device and inode).
func (n *Node) nspawnEntries() []string {
	out := []string{"/run/systemd/nspawn/propagate/" + n.Name}
	if n.rootLock != "" {
		out = append(out, n.rootLock)
	}
	return out
}
