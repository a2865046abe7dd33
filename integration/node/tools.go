// Package node is pullguard's node test bed: a real Kubernetes control plane (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler) on loopback and a real node booted
// with systemd in systemd-nspawn, running the pinned containerd, Debian's runc and a real
// kubelet as systemd units, configured the way kubeadm configures a node, with the test
// registry of integration/testbed. Everything lives under one temporary directory and is
// started and stopped by the test; see README.md for what this host needs and why.
package node

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/pullguard/pullguard/integration/kube"
	"github.com/pullguard/pullguard/integration/testbed"
)

// ErrToolsMissing is wrapped when a binary or the node's root filesystem has not been installed.
var ErrToolsMissing = errors.New("node test tools missing: run `make tools-node` (integration/tools/install.sh, integration/tools-kube/install.sh, integration/tools-node/install.sh)")

// Tools are the programs and the root filesystem the bed runs.
type Tools struct {
	Testbed           testbed.Tools // containerd, shim, ctr, crictl, registry, busybox
	Kube              kube.Binaries // kube-apiserver, etcd
	ControllerManager string
	Scheduler         string
	Kubelet           string
	Nspawn            string
	// Rootfs is the node's root filesystem as integration/tools-node/install.sh built it (env
	// PULLGUARD_NODE_ROOTFS, else the tree named by <cache>/current); every node boots a copy.
	Rootfs string
	Repo   string
}

// FindTools locates everything; the error wraps ErrToolsMissing and names what is missing.
func FindTools() (Tools, error) {
	repo, err := testbed.RepoRoot()
	if err != nil {
		return Tools{}, err
	}
	tb, err := testbed.FindTools()
	if err != nil {
		return Tools{}, fmt.Errorf("%w: %v", ErrToolsMissing, err)
	}
	kb, err := kube.FindBinaries()
	if err != nil {
		return Tools{}, fmt.Errorf("%w: %v", ErrToolsMissing, err)
	}
	t := Tools{
		Testbed: tb, Kube: kb, Repo: repo,
		ControllerManager: filepath.Join(tb.Dir, "kube-controller-manager"),
		Scheduler:         filepath.Join(tb.Dir, "kube-scheduler"),
		Kubelet:           filepath.Join(tb.Dir, "kubelet"),
	}
	var missing []string
	for _, p := range []string{t.ControllerManager, t.Scheduler, t.Kubelet} {
		if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
			missing = append(missing, p)
		}
	}
	if t.Nspawn, err = exec.LookPath("systemd-nspawn"); err != nil {
		missing = append(missing, "systemd-nspawn (Debian package systemd-container)")
	}
	t.Rootfs = os.Getenv("PULLGUARD_NODE_ROOTFS")
	if t.Rootfs == "" {
		cache := os.Getenv("PULLGUARD_NODE_CACHE")
		if cache == "" {
			cache = filepath.Join(repo, ".tools", "node")
		}
		if b, err := os.ReadFile(filepath.Join(cache, "current")); err == nil {
			t.Rootfs = strings.TrimSpace(string(b))
		}
	}
	if _, err := os.Stat(filepath.Join(t.Rootfs, ".pullguard-rootfs")); t.Rootfs == "" || err != nil {
		missing = append(missing, "the node rootfs (integration/tools-node/install.sh)")
	}
	if len(missing) > 0 {
		return t, fmt.Errorf("%w: not found: %s", ErrToolsMissing, strings.Join(missing, ", "))
	}
	return t, nil
}
