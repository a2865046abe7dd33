package installer

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pullguard/pullguard/daemonset/hoststate"
)

// backupName maps a host path to its file name in BackupDir.
func backupName(hostPath string) string {
	return strings.ReplaceAll(strings.TrimPrefix(hostPath, "/"), "/", "__")
}

// backupFiles keeps the original bytes of every file about to be edited
// (or records that it did not exist) and returns the updated list. With
// keep, a file already in the list keeps its backup: it was taken before
// install first changed the file, and the file on disk is install's own
// edit now. Without keep the backups are taken again, because the node may
// have changed since an earlier install that was undone.
func backupFiles(root hoststate.Root, list []hoststate.Backup, edits []plannedEdit, keep bool) ([]hoststate.Backup, error) {
	if err := os.MkdirAll(root.Path(hoststate.BackupDir), 0o700); err != nil {
		return nil, fmt.Errorf("create backup dir: %w", err)
	}
	list = slices.Clone(list)
	for _, e := range edits {
		i := slices.IndexFunc(list, func(b hoststate.Backup) bool { return b.HostPath == e.file.hostPath })
		if keep && i >= 0 {
			continue
		}
		b := hoststate.Backup{HostPath: e.file.hostPath, Mode: e.file.mode, Absent: e.file.absent}
		if !e.file.absent {
			b.BackupPath = hoststate.BackupDir + "/" + backupName(e.file.hostPath)
			if err := hoststate.WriteFileAtomic(root.Path(b.BackupPath), e.file.data, 0o600); err != nil {
				return nil, fmt.Errorf("back up %s: %w", e.file.hostPath, err)
			}
		}
		if i >= 0 {
			list[i] = b
		} else {
			list = append(list, b)
		}
	}
	return list, nil
}

// swapFiles creates dirs, then writes every new file beside its original
// and only then renames them into place, in order, so a failure while
// writing leaves the files untouched. It returns the directories it
// created.
func swapFiles(root hoststate.Root, edits []plannedEdit, dirs []string) ([]string, error) {
	var created []string
	for _, d := range dirs {
		if _, err := os.Stat(root.Path(d)); err == nil {
			continue
		}
		if err := os.Mkdir(root.Path(d), 0o755); err != nil {
			return created, fmt.Errorf("create %s: %w", d, err)
		}
		created = append(created, d)
	}
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
			return created, fmt.Errorf("stage %s: %w", e.file.hostPath, err)
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
			return created, fmt.Errorf("stage %s: %w", e.file.hostPath, werr)
		}
	}
	for i, e := range edits {
		if err := os.Rename(tmps[i], root.Path(e.file.hostPath)); err != nil {
			return created, fmt.Errorf("replace %s: %w", e.file.hostPath, err)
		}
		tmps[i] = ""
	}
	tmps = nil
	return created, nil
}

// restoreFile puts original bytes back, only if the file differs; a file
// that did not exist (absent) is removed.
func restoreFile(root hoststate.Root, hostPath string, original []byte, mode os.FileMode, absent bool) (bool, error) {
	p := root.Path(hostPath)
	if absent {
		err := os.Remove(p)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("remove %s: %w", hostPath, err)
		}
		return true, nil
	}
	if cur, err := os.ReadFile(p); err == nil && bytes.Equal(cur, original) {
		return false, nil
	}
	if err := hoststate.WriteFileAtomic(p, original, mode); err != nil {
		return false, fmt.Errorf("restore %s: %w", hostPath, err)
	}
	return true, nil
}

// restoreEdits undoes edits (newest first) from the bytes planned over.
func restoreEdits(root hoststate.Root, edits []plannedEdit) (bool, error) {
	changed := false
	var errs []error
	for i := len(edits) - 1; i >= 0; i-- {
		f := edits[i].file
		c, err := restoreFile(root, f.hostPath, f.data, f.mode, f.absent)
		if err != nil {
			errs = append(errs, err)
		}
		changed = changed || c
	}
	return changed, errors.Join(errs...)
}

// removeDirs removes directories install created, innermost first, as
// long as they are empty.
func removeDirs(root hoststate.Root, dirs []string) {
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = os.Remove(root.Path(dirs[i]))
	}
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
