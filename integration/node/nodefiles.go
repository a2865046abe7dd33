package node

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The node's configuration, written into its root before it boots, file by file as an admin
// (or kubeadm) sets up a containerd + kubelet node. What differs from a machine is in
// prepareScript and README.md.

// Paths on the node.
const (
	ContainerdConfig    = "/etc/containerd/config.toml"
	ContainerdSocket    = "/run/containerd/containerd.sock"
	KubeletConfig       = "/var/lib/kubelet/config.yaml"
	KubeadmFlags        = "/var/lib/kubelet/kubeadm-flags.env"
	KubeletKubeconfig   = "/etc/kubernetes/kubelet.conf"
	KubeletUnit         = "/etc/systemd/system/kubelet.service"
	KubeletDropIn       = "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf"
	ContainerdUnit      = "/etc/systemd/system/containerd.service"
	ContainerdDropInDir = "/etc/containerd/conf.d"
	CACert              = "/etc/kubernetes/pki/ca.crt"
	CNIConfig           = "/etc/cni/net.d/10-host-network-only.conflist"
	binDir              = "/usr/local/bin"
)

// containerd.service as containerd ships it.
const containerdUnit = `[Unit]
Description=containerd container runtime
After=network.target local-fs.target dbus.service

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/containerd
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
`

// kubelet.service and its drop-in as the Kubernetes packages ship them for kubeadm (the binary
// is in /usr/local/bin here).
const kubeletUnit = `[Unit]
Description=kubelet: The Kubernetes Node Agent
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/local/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
`

const kubeletDropIn = `# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS should be sourced from this file.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
`

// kubeletConfig is the KubeletConfiguration kubeadm v1.34 writes, with the node's own ports and
// the settings this bed needs, each said why.
func kubeletConfig(port, healthzPort int) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 0s
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 0s
    cacheUnauthorizedTTL: 0s
# kubeadm's default is systemd; the node's cgroups are cgroup v1 hierarchies that its systemd
# did not set up (see README.md), so kubelet and containerd manage them directly.
cgroupDriver: cgroupfs
clusterDomain: cluster.local
cpuManagerReconcilePeriod: 0s
evictionPressureTransitionPeriod: 0s
fileCheckFrequency: 0s
healthzBindAddress: 127.0.0.1
# The node shares the machine's network: its ports are picked free, and the kubelet API
# listens on loopback only.
address: 127.0.0.1
port: %d
healthzPort: %d
httpCheckFrequency: 0s
imageMaximumGCAge: 0s
imageMinimumGCAge: 0s
kind: KubeletConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
# Sharing the machine's network namespace, kubelet must not add its chains to the machine's
# iptables.
makeIPTablesUtilChains: false
memorySwap: {}
nodeStatusReportFrequency: 0s
nodeStatusUpdateFrequency: 0s
resolvConf: /etc/resolv.conf
# The test CA issued the client certificate; there is no CSR signer to renew it from.
rotateCertificates: false
runtimeRequestTimeout: 0s
shutdownGracePeriod: 0s
shutdownGracePeriodCriticalPods: 0s
staticPodPath: /etc/kubernetes/manifests
streamingConnectionIdleTimeout: 0s
# kubeadm leaves the default (1m): pods are synced, and ConfigMap volumes refreshed, every
# 10s here so that a ConfigMap edit reaches the node within the tests' deadlines.
syncFrequency: 10s
volumeStatsAggPeriod: 0s
`, port, healthzPort)
}

// kubeadmFlags is kubeadm-flags.env as kubeadm v1.34 writes it for containerd.
func kubeadmFlags(sandboxImage string) string {
	return fmt.Sprintf("KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix://%s --pod-infra-container-image=%s\"\n", ContainerdSocket, sandboxImage)
}

// prepareScript makes the nspawn container a machine kubelet and containerd can run on, before
// either starts (see README.md): the cgroup v1 controllers that nspawn mounts read-only are made
// writable for the node's own subtree, and the kernel settings kubelet insists on are shown to
// it with the values it wants, instead of kubelet changing them for the whole machine (the
// node shares the machine's kernel).
const prepareScript = `#!/bin/sh
set -eu
for c in /sys/fs/cgroup/*/; do
	case "$c" in */systemd/|*/unified/) continue ;; esac
	mount -o remount,bind,rw "$c"
done
for f in /etc/pgnode/sysctl/*; do
	mount --bind -o ro "$f" "/proc/sys/$(basename "$f" | tr . /)"
done
`

const prepareUnit = `[Unit]
Description=Prepare the nspawn node for containerd and kubelet (pullguard node test bed)
DefaultDependencies=no
After=local-fs.target
Before=containerd.service kubelet.service
ConditionVirtualization=container

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/pgnode-prepare

[Install]
WantedBy=multi-user.target
`

// systemdConf bounds how long the node's systemd waits for a process that ignores SIGTERM
// (90s by default) when it stops a unit or the node: the tests stop nodes and units often.
const systemdConf = `[Manager]
DefaultTimeoutStopSec=15s
`

// kubeletSysctls are the values kubelet's container manager requires (it writes them unless
// protectKernelDefaults, and fails when it cannot).
var kubeletSysctls = map[string]string{
	"vm.overcommit_memory":      "1",
	"vm.panic_on_oom":           "0",
	"kernel.panic":              "10",
	"kernel.panic_on_oops":      "1",
	"kernel.keys.root_maxkeys":  "1000000",
	"kernel.keys.root_maxbytes": "25000000",
}

// cniConfig lets containerd report its network ready (it needs a network configuration, not
// the plugin). Only host-network pods run on this node: a pod with a network of its own fails
// at sandbox creation (see README.md).
const cniConfig = `{
  "cniVersion": "1.0.0",
  "name": "host-network-only",
  "plugins": [{"type": "loopback"}]
}
`

// containerdConfig edits containerd's own default config (`containerd config default`) as a
// node admin does: the sandbox image from the test registry, the registry hosts directory,
// and restrict_oom_score_adj (runc cannot lower oom_score_adj without CAP_SYS_RESOURCE,
// which this machine does not give).
func containerdConfig(ctx context.Context, containerdBin, sandboxImage string) (string, error) {
	r := run(ctx, containerdBin, "config", "default")
	if r.Err != nil {
		return "", fmt.Errorf("containerd config default: %s", r)
	}
	cfg := r.Stdout
	for _, e := range []struct{ section, key, value string }{
		{"plugins.'io.containerd.cri.v1.images'.pinned_images", "sandbox", fmt.Sprintf("'%s'", sandboxImage)},
		{"plugins.'io.containerd.cri.v1.images'.registry", "config_path", "'/etc/containerd/certs.d'"},
		{"plugins.'io.containerd.cri.v1.runtime'", "restrict_oom_score_adj", "true"},
	} {
		var err error
		if cfg, err = setTOMLKey(cfg, e.section, e.key, e.value); err != nil {
			return "", fmt.Errorf("containerd config: %w", err)
		}
	}
	return cfg, nil
}

// setTOMLKey replaces the value of key in the table [section] of a TOML document, keeping
// every other line as it is; the key must be there.
func setTOMLKey(doc, section, key, value string) (string, error) {
	var out strings.Builder
	in, done := false, false
	sc := bufio.NewScanner(strings.NewReader(doc))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		trim := strings.TrimSpace(line)
		if strings.HasPrefix(trim, "[") {
			in = trim == "["+section+"]"
		} else if in && !done {
			if k, _, ok := strings.Cut(trim, "="); ok && strings.TrimSpace(k) == key {
				indent := line[:len(line)-len(strings.TrimLeft(line, " \t"))]
				line = indent + key + " = " + value
				done = true
			}
		}
		out.WriteString(line + "\n")
	}
	if !done {
		return "", fmt.Errorf("no key %s in [%s]", key, section)
	}
	return out.String(), nil
}

// hostsTOML lets containerd pull from the test registry over plain HTTP.
func hostsTOML(host string) string {
	return fmt.Sprintf("server = \"http://%[1]s\"\n\n[host.\"http://%[1]s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", host)
}

// writeFiles writes files (path on the node -> content) under root.
func writeFiles(root string, files map[string]string, modes map[string]os.FileMode) error {
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return fmt.Errorf("write node file %s: %w", p, err)
		}
		mode, ok := modes[p]
		if !ok {
			mode = 0o644
		}
		if err := os.WriteFile(full, []byte(content), mode); err != nil {
			return fmt.Errorf("write node file %s: %w", p, err)
		}
	}
	return nil
}
