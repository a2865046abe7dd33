package installer

import (
	"context"
	"fmt"
	"os"

	"github.com/pullguard/pullguard/config"
	"github.com/pullguard/pullguard/daemonset/hoststate"
	"github.com/pullguard/pullguard/plugin/nri"
)

// restoration is a backup read back, ready to be put in place.
type restoration struct {
	hoststate.Backup
	data []byte
}

// readBackups reads every backup of list, so a missing one fails before
// anything is changed.
func readBackups(root hoststate.Root, list []hoststate.Backup) ([]restoration, error) {
	out := make([]restoration, 0, len(list))
	for _, b := range list {
		r := restoration{Backup: b}
		if !b.Absent {
			data, err := hoststate.ReadBounded(root.Path(b.BackupPath), maxContainerdFileBytes)
			if err != nil {
				return nil, fmt.Errorf("read backup of %s: %w", b.HostPath, err)
			}
			r.data = data
		}
		out = append(out, r)
	}
	return out, nil
}

// putBack restores files, the last backed up first: containerd's main
// file goes back (dropping the import of pullguard's drop-in) before the
// drop-in is removed.
func putBack(root hoststate.Root, rs []restoration) (bool, error) {
	changed := false
	for i := len(rs) - 1; i >= 0; i-- {
		r := rs[i]
		c, err := restoreFile(root, r.HostPath, r.data, r.Mode, r.Absent)
		if err != nil {
			return changed, err
		}
		changed = changed || c
	}
	return changed, nil
}

// Uninstall undoes Install in the order that keeps the node working:
// kubelet's configuration restored byte for byte and kubelet restarted
// (its image calls go straight to containerd again), then containerd's
// configuration restored and containerd restarted (it no longer requires
// pullguard's plugin), and only then pullguard stopped and its files
// removed. Running it on a host without pullguard does nothing.
func Uninstall(ctx context.Context, opts Options) error {
	if err := opts.check(false); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	root, log := opts.Root, opts.Logger
	st, err := hoststate.LoadState(root)
	if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	spec := installedSpec(root)
	main := opts.ContainerdConfig
	if st != nil && st.NRI != nil && st.NRI.ContainerdConfig != "" {
		main = st.NRI.ContainerdConfig
	}
	if st == nil {
		// No record of an install: only safe if kubelet does not depend on
		// whatever pullguard files are lying around.
		if err := refuseIfKubeletUsesPullguard(root, opts.KubeletConfig); err != nil {
			return fmt.Errorf("uninstall: %w", err)
		}
	}
	// Backups are only restored while install's edit is in place: after a
	// rolled-back install the files on disk are already the originals, and
	// the backups may be older than later edits by an administrator.
	var kubRestore, ctdRestore []restoration
	if st != nil && st.KubeletWired {
		if kubRestore, err = readBackups(root, st.Backups); err != nil {
			return fmt.Errorf("uninstall: %w; nothing was changed", err)
		}
	}
	if st != nil && st.ContainerdWired {
		if ctdRestore, err = readBackups(root, st.ContainerdBackups); err != nil {
			return fmt.Errorf("uninstall: %w; nothing was changed", err)
		}
	}
	if err := refuseIfContainerdStillRequires(root, main, spec, ctdRestore); err != nil {
		return fmt.Errorf("uninstall: %w; nothing was changed", err)
	}

	// 1. kubelet.
	if st != nil && st.KubeletWired {
		restored, err := putBack(root, kubRestore)
		if err != nil {
			return fmt.Errorf("uninstall: %w; pullguard is still running, kubelet still uses it; copy the files in %s back by hand and restart kubelet",
				err, hoststate.BackupDir)
		}
		if restored {
			if err := opts.Services.Restart(ctx, KubeletUnit); err != nil {
				return fmt.Errorf("uninstall: kubelet's configuration is restored but restarting kubelet failed: %w; "+
					"pullguard was left running; restart kubelet on the node (systemctl restart kubelet) and run uninstall again", err)
			}
			log.InfoContext(ctx, "kubelet restored and restarted")
		}
		st.KubeletWired = false
		if err := hoststate.SaveState(root, st); err != nil {
			return fmt.Errorf("uninstall: %w", err)
		}
	}

	// 2. containerd.
	if st != nil && st.ContainerdWired {
		restored, err := putBack(root, ctdRestore)
		if err != nil {
			return fmt.Errorf("uninstall: %w; kubelet no longer uses pullguard, pullguard is still running and containerd still requires it; "+
				"put back the files in %s by hand (see daemonset/README.md) and restart containerd", err, hoststate.BackupDir)
		}
		removeDirs(root, st.CreatedDirs)
		if restored {
			if err := opts.Services.Restart(ctx, ContainerdUnit); err != nil {
				return fmt.Errorf("uninstall: containerd's configuration is restored but restarting containerd failed: %w; "+
					"pullguard was left running, since containerd requires it until it restarts; restart containerd on the node (systemctl restart containerd) "+
					"and run uninstall again", err)
			}
			log.InfoContext(ctx, "containerd's configuration restored and containerd restarted")
		}
		st.ContainerdWired, st.CreatedDirs = false, nil
		if err := hoststate.SaveState(root, st); err != nil {
			return fmt.Errorf("uninstall: %w", err)
		}
	}

	// 3. pullguard.
	unitPresent := exists(root.Path(hoststate.UnitPath))
	if unitPresent {
		if err := opts.Services.Stop(ctx, hoststate.UnitName); err != nil {
			return fmt.Errorf("uninstall: kubelet and containerd no longer use pullguard, but stopping it failed: %w", err)
		}
		if err := opts.Services.Disable(ctx, hoststate.UnitName); err != nil {
			return fmt.Errorf("uninstall: %w", err)
		}
	}
	for _, p := range []string{hoststate.UnitPath, hoststate.BinaryPath, hoststate.ConfigDir, hoststate.StateDir} {
		if err := os.RemoveAll(root.Path(p)); err != nil {
			return fmt.Errorf("uninstall: remove %s: %w", p, err)
		}
	}
	if unitPresent {
		if err := opts.Services.DaemonReload(ctx); err != nil {
			return fmt.Errorf("uninstall: files removed, but systemctl daemon-reload failed: %w", err)
		}
	}
	log.InfoContext(ctx, "pullguard removed from the host")
	return nil
}

// installedSpec is how the installed pullguard presents itself to
// containerd (its config, or the defaults).
func installedSpec(root hoststate.Root) pluginSpec {
	c := config.Default()
	if data, err := hoststate.ReadBounded(root.Path(hoststate.ConfigPath), config.MaxConfigBytes); err == nil {
		if parsed, err := config.Parse(data, hoststate.ConfigPath); err == nil {
			c = parsed
		}
	}
	return pluginSpec{name: c.NRI.PluginName, index: c.NRI.PluginIndex, timeout: c.NRI.Timeout.Duration}
}

// refuseIfContainerdStillRequires refuses to take pullguard away while
// containerd's config, with install's changes put back, would still
// require its plugin: containerd would then refuse every container create.
func refuseIfContainerdStillRequires(root hoststate.Root, main string, spec pluginSpec, restore []restoration) error {
	files := map[string][]byte{}
	for _, r := range restore {
		files[r.HostPath] = r.data // nil for a file install created: gone
	}
	c, err := nri.ReadContainerdNRIFS(overlayFS{base: os.DirFS(string(root)), files: files}, main)
	if err != nil {
		// No containerd config to read (another runtime, or one
		// configured elsewhere): nothing of install's to check.
		return nil
	}
	if c.Requires(spec.name, spec.index) {
		return fmt.Errorf("containerd's config would still require pullguard's NRI plugin once what install changed is put back (files read: %v), "+
			"and containerd would refuse every container create without it; remove %q from required_plugins in [plugins.'%s'.default_validator] there, "+
			"restart containerd, then run uninstall again", c.Files, spec.name, nri.ContainerdPluginID)
	}
	return nil
}

func refuseIfKubeletUsesPullguard(root hoststate.Root, kubeletConfig string) error {
	socket := hoststate.DefaultSocket
	if cfg, err := hoststate.ReadBounded(root.Path(hoststate.ConfigPath), maxKubeletFileBytes); err == nil {
		if s, err := hoststate.ServerSocket(cfg); err == nil {
			socket = s
		}
	}
	kub, err := inspectKubelet(root, kubeletConfig)
	if err != nil {
		// No kubelet we understand, hence none wired by us.
		return nil
	}
	if sameEndpoint(kub.runtimeEndpoint, socket) || sameEndpoint(kub.imageEndpoint, socket) {
		return fmt.Errorf("kubelet uses pullguard's socket %s but there is no install state (%s) with its original configuration; "+
			"nothing was changed: point kubelet back at its runtime by hand (see daemonset/README.md)", socket, hoststate.StatePath)
	}
	return nil
}
