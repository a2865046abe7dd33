package installer

import "github.com/pullguard/pullguard/daemonset/hoststate"

// KubeletUnit is the host's kubelet service.
const KubeletUnit = "kubelet.service"

// unitFile is pullguard's systemd unit. pullguard needs containerd (it
// forwards image calls to it and registers its NRI plugin with it), so it
// starts after containerd; it does not need kubelet, and comes up before
// it, since kubelet's image service is pullguard's socket.
//
// Wants= and not Requires= or BindsTo=: a restart of containerd must not
// restart pullguard. pullguard notices containerd going away and registers
// its plugin again once containerd is back, and the image service keeps
// answering (Unavailable while containerd is down). Restart=always with
// StartLimitIntervalSec=0 keeps systemd restarting pullguard forever
// instead of giving up after a burst of failures: while it is down,
// containerd refuses every container create.
//
// Type=notify: pullguard says it is ready once its socket serves and
// containerd has its NRI plugin registered, so kubelet, ordered after it,
// starts against a node that decides. The serve loop feeds a watchdog; a
// hung pullguard is restarted. OOMScoreAdjust=-999 as containerd's own unit:
// the kernel must not pick the process every create depends on.
const unitFile = `# Installed by pullguard-agent install; removed by pullguard-agent uninstall.
[Unit]
Description=pullguard: CRI image service proxy and containerd NRI plugin (image policy)
Documentation=https://github.com/pullguard/pullguard
After=network-online.target containerd.service
Wants=network-online.target containerd.service
Before=kubelet.service
StartLimitIntervalSec=0

[Service]
Type=notify
NotifyAccess=main
TimeoutStartSec=300
WatchdogSec=30
OOMScoreAdjust=-999
ExecStart=` + hoststate.BinaryPath + ` serve --config ` + hoststate.ConfigPath + `
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
`
