package installer

import "github.com/pullguard/pullguard/daemonset/hoststate"

// KubeletUnit is the host's kubelet service.
const KubeletUnit = "kubelet.service"

// unitFile is pullguard's systemd unit. It must come up before kubelet and
// never stay down: kubelet cannot start or stop containers without it.
// StartLimitIntervalSec=0 keeps systemd restarting it forever instead of
// giving up after a burst of failures.
const unitFile = `# Installed by pullguard install; removed by pullguard uninstall.
[Unit]
Description=pullguard CRI image policy proxy (kubelet -> pullguard -> container runtime)
Documentation=https://github.com/pullguard/pullguard
After=network-online.target containerd.service crio.service
Wants=network-online.target
Before=kubelet.service
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart=` + hoststate.BinaryPath + ` serve --config ` + hoststate.ConfigPath + `
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target kubelet.service
`
