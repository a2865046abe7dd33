package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// notifyReady tells systemd (Type=notify) that pullguard serves: its socket
// answers and, in enforce mode, containerd has its NRI plugin registered, so
// kubelet (ordered after pullguard) starts against a node that decides.
// Outside systemd it does nothing.
func notifyReady(ctx context.Context, gate *nriGate, log *slog.Logger) {
	if gate != nil {
		if err := gate.plugin.WaitRegistered(ctx); err != nil {
			return
		}
	}
	if sent, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn("could not tell systemd pullguard is ready", "error", err)
	} else if sent {
		log.Info("told systemd pullguard is ready")
	}
}

// watchdogInterval is how often the serve loop must tell systemd it is alive
// (half of WatchdogSec), or 0 when systemd does not watch.
func watchdogInterval() time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return 0
	}
	return d / 2
}

// watchdogPing tells systemd the serve loop is alive.
func watchdogPing() { _, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog) }

// notifyStopping tells systemd pullguard is draining.
func notifyStopping() { _, _ = daemon.SdNotify(false, daemon.SdNotifyStopping) }
