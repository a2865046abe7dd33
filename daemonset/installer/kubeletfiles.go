package installer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pullguard/pullguard/daemonset/hoststate"
)

// backupName maps a kubelet host path to its file name in BackupDir.
func backupName(hostPath string) string {
	return strings.ReplaceAll(strings.TrimPrefix(hostPath, "/"), "/", "__")
}

// backupKubelet keeps the original bytes of every file about to be edited.
// It is only called while kubelet is not wired to pullguard, so the files
// on disk are the originals; a backup left by an earlier, undone install is
// replaced because the node may have changed since.
func backupKubelet(root hoststate.Root, st *hoststate.State, edits []plannedEdit) error {
	if err := os.MkdirAll(root.Path(hoststate.BackupDir), 0o700); err != nil {
		return fmt.Errorf("create backup dir: %w", err)
	}
	for _, e := range edits {
		b := hoststate.Backup{
			HostPath:   e.file.hostPath,
			BackupPath: hoststate.BackupDir + "/" + backupName(e.file.hostPath),
			Mode:       e.file.mode,
		}
		if err := hoststate.WriteFileAtomic(root.Path(b.BackupPath), e.file.data, 0o600); err != nil {
			return fmt.Errorf("back up %s: %w", e.file.hostPath, err)
		}
		replaced := false
		for i := range st.Backups {
			if st.Backups[i].HostPath == b.HostPath {
				st.Backups[i], replaced = b, true
			}
		}
		if !replaced {
			st.Backups = append(st.Backups, b)
		}
	}
	return nil
}

// swapKubeletFiles writes every new file beside its original first and only
// then renames them into place, so a failure while writing leaves kubelet's
// files untouched.
func swapKubeletFiles(root hoststate.Root, edits []plannedEdit) error {
	tmps := make([]string, 0, len(edits))
	defer func() {
		for _, t := range tmps {
			_ = os.Remove(t)
		}
	}()
	for _, e := range edits {
		p := root.Path(e.file.hostPath)
		f, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".pullguard-*")
		if err != nil {
			return fmt.Errorf("stage %s: %w", e.file.hostPath, err)
		}
		tmps = append(tmps, f.Name())
		_, werr := f.Write(e.data)
		if werr == nil {
			werr = f.Chmod(e.file.mode)
		}
		if werr == nil {
			werr = f.Sync()
		}
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return fmt.Errorf("stage %s: %w", e.file.hostPath, werr)
		}
	}
	for i, e := range edits {
		if err := os.Rename(tmps[i], root.Path(e.file.hostPath)); err != nil {
			return fmt.Errorf("replace %s: %w", e.file.hostPath, err)
		}
	}
	tmps = nil
	return nil
}

// restoreFile puts original bytes back, only if the file differs.
func restoreFile(root hoststate.Root, hostPath string, original []byte, mode os.FileMode) (bool, error) {
	p := root.Path(hostPath)
	if cur, err := os.ReadFile(p); err == nil && bytes.Equal(cur, original) {
		return false, nil
	}
	if err := hoststate.WriteFileAtomic(p, original, mode); err != nil {
		return false, fmt.Errorf("restore %s: %w", hostPath, err)
	}
	return true, nil
}

// unwireKubelet undoes a failed rewire: kubelet's original bytes go back,
// kubelet is restarted if it had been, and pullguard is stopped.
func unwireKubelet(ctx context.Context, opts Options, st *hoststate.State, edits []plannedEdit, restartKubelet bool, cause error) error {
	root := opts.Root
	var errs []error
	for _, e := range edits {
		if _, err := restoreFile(root, e.file.hostPath, e.file.data, e.file.mode); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("install: %w; restoring kubelet's configuration ALSO FAILED (%v): copy the files in %s back by hand "+
			"(see daemonset/README.md) and restart kubelet", cause, errors.Join(errs...), hoststate.BackupDir)
	}
	st.KubeletWired = false
	if err := hoststate.SaveState(root, st); err != nil {
		errs = append(errs, err)
	}
	if restartKubelet {
		if err := opts.Services.Restart(ctx, KubeletUnit); err != nil {
			errs = append(errs, fmt.Errorf("restart kubelet with its original configuration: %w", err))
		}
	}
	if err := opts.Services.Stop(ctx, hoststate.UnitName); err != nil {
		errs = append(errs, err)
	}
	if err := opts.Services.Disable(ctx, hoststate.UnitName); err != nil {
		errs = append(errs, err)
	}
	msg := "kubelet's configuration was restored byte for byte and pullguard stopped; check `journalctl -u kubelet` on the node and run install again"
	if len(errs) > 0 {
		return fmt.Errorf("install: %w; %s; cleanup reported: %v", cause, msg, errors.Join(errs...))
	}
	return fmt.Errorf("install: %w; %s", cause, msg)
}

// Uninstall restores kubelet's configuration byte for byte from the backup,
// restarts kubelet, and only then stops pullguard and removes its files.
// Running it on a host without pullguard does nothing.
func Uninstall(ctx context.Context, opts Options) error {
	if err := opts.check(false); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	root, log := opts.Root, opts.Logger
	st, err := hoststate.LoadState(root)
	if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	if st == nil {
		// No record of an install: only safe if kubelet does not depend on
		// whatever pullguard files are lying around.
		if err := refuseIfKubeletUsesPullguard(root, opts.KubeletConfig); err != nil {
			return fmt.Errorf("uninstall: %w", err)
		}
	}
	// Backups are only restored while kubelet is wired to pullguard: after a
	// rolled-back install the files on disk are already the originals, and
	// the backups may be older than later edits by an administrator.
	if st != nil && st.KubeletWired {
		restored := false
		for _, b := range st.Backups {
			orig, err := hoststate.ReadBounded(root.Path(b.BackupPath), maxKubeletFileBytes)
			if err != nil {
				return fmt.Errorf("uninstall: read backup of %s: %w; nothing was changed", b.HostPath, err)
			}
			changed, err := restoreFile(root, b.HostPath, orig, b.Mode)
			if err != nil {
				return fmt.Errorf("uninstall: %w; pullguard is still running, kubelet still uses it; copy %s to %s by hand and restart kubelet",
					err, b.BackupPath, b.HostPath)
			}
			restored = restored || changed
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

	unitPresent := exists(root.Path(hoststate.UnitPath))
	if unitPresent {
		if err := opts.Services.Stop(ctx, hoststate.UnitName); err != nil {
			return fmt.Errorf("uninstall: kubelet no longer uses pullguard, but stopping it failed: %w", err)
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

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
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
