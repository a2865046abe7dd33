package hoststate

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// maxPreviousDirs bounds the names tried when moving a real directory
// aside; reaching it means something keeps replacing the link by hand.
const maxPreviousDirs = 100

// SwapDir makes link a symlink to a sibling directory holding exactly files
// (slash-separated relative path -> content), so that a reader of link sees
// the old tree or the new one, never a mix or a partial copy. It reports
// whether anything changed. One writer per link is assumed (each node runs
// one syncer).
//
// The directory is named after its content, ".<base>-<hash>", so unchanged
// content is seen from the link alone and nothing is touched. Otherwise, in
// an order that a crash at any point leaves the link at a complete tree:
//
//  1. the files are written and fsynced in a temporary ".<base>.tmp-*"
//     directory, which is then fsynced with its subdirectories, and renamed
//     to the hashed name;
//  2. something other than a symlink where the link belongs (a directory
//     made by hand or by an older installer) is moved aside to
//     ".<base>-previous" (or ".<base>-previous-N" if that is taken), never
//     deleted: it may hold someone's work;
//  3. the parent is fsynced, so the hashed directory is on disk under its
//     name before anything points at it;
//  4. a new symlink is renamed over link, and the parent fsynced again;
//  5. hashed directories other than the current one, and temporary ones a
//     crash left behind, are removed.
//
// The previous hashed directory is not kept: readers resolve the link anew
// at every open, so a kept copy would not make a reader's several reads
// consistent, and a rollback is the syncer writing the old content again.
// What keeps a reload consistent is the daemon re-reading when the content
// it fingerprinted changed underneath it.
func SwapDir(link string, files map[string][]byte) (bool, error) {
	link = filepath.Clean(link)
	names := make([]string, 0, len(files))
	for name := range files {
		if !filepath.IsLocal(filepath.FromSlash(name)) {
			return false, fmt.Errorf("swap %s: file name %q is not a relative path inside it", link, name)
		}
		names = append(names, name)
	}
	slices.Sort(names)
	parent, base := filepath.Split(link)
	parent = filepath.Clean(parent)
	hashPrefix := "." + base + "-"
	target := hashPrefix + treeHash(names, files)
	if cur, err := os.Readlink(link); err == nil && cur == target {
		if fi, err := os.Stat(filepath.Join(parent, target)); err == nil && fi.IsDir() {
			return false, nil
		}
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return false, fmt.Errorf("swap %s: create %s: %w", link, parent, err)
	}

	built, err := buildTree(parent, base, names, files)
	if err != nil {
		return false, fmt.Errorf("swap %s: %w", link, err)
	}
	dir := filepath.Join(parent, target)
	// A directory under the hashed name that the link does not point at is
	// left from an interrupted swap and may be partial: the fresh copy wins.
	if err := os.RemoveAll(dir); err != nil {
		_ = os.RemoveAll(built)
		return false, fmt.Errorf("swap %s: clear %s: %w", link, dir, err)
	}
	if err := os.Rename(built, dir); err != nil {
		_ = os.RemoveAll(built)
		return false, fmt.Errorf("swap %s: rename %s: %w", link, built, err)
	}
	if err := moveAside(link, parent, hashPrefix); err != nil {
		return false, fmt.Errorf("swap %s: %w", link, err)
	}
	if err := SyncDir(parent); err != nil {
		return false, fmt.Errorf("swap %s: %w", link, err)
	}

	tmpLink := filepath.Join(parent, "."+base+".link-tmp")
	if err := os.Remove(tmpLink); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("swap %s: clear %s: %w", link, tmpLink, err)
	}
	if err := os.Symlink(target, tmpLink); err != nil {
		return false, fmt.Errorf("swap %s: link: %w", link, err)
	}
	if err := os.Rename(tmpLink, link); err != nil {
		_ = os.Remove(tmpLink)
		return false, fmt.Errorf("swap %s: rename link: %w", link, err)
	}
	// The old tree is deleted next: the swap must be on disk first.
	if err := SyncDir(parent); err != nil {
		return true, fmt.Errorf("swap %s: %w", link, err)
	}
	removeStale(parent, base, target)
	return true, nil
}

// treeHash names a tree by its file names and contents (names sorted).
func treeHash(names []string, files map[string][]byte) string {
	h := sha256.New()
	for _, name := range names {
		fmt.Fprintf(h, "%q %d\n", name, len(files[name]))
		h.Write(files[name])
	}
	return hex.EncodeToString(h.Sum(nil))[:hashLen]
}

// hashLen is how many hex digits of the content hash name a tree.
const hashLen = 16

// buildTree writes files into a new temporary directory in parent and makes
// it durable: every file, every directory created, and the directory itself
// fsynced. It returns the directory's path.
func buildTree(parent, base string, names []string, files map[string][]byte) (string, error) {
	tmp, err := os.MkdirTemp(parent, "."+base+".tmp-")
	if err != nil {
		return "", fmt.Errorf("create temporary directory: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(tmp)
		}
	}()
	// MkdirTemp makes it 0700; readers (the daemon, notation) need 0755,
	// which the loop below sets on every directory of the tree.
	dirs := []string{tmp}
	for _, name := range names {
		p := filepath.Join(tmp, filepath.FromSlash(name))
		for d := filepath.Dir(p); d != tmp && !slices.Contains(dirs, d); d = filepath.Dir(d) {
			dirs = append(dirs, d)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", fmt.Errorf("create %s: %w", filepath.Dir(p), err)
		}
		if err := writeSynced(p, files[name]); err != nil {
			return "", err
		}
	}
	// Deepest first, so each directory's entries are durable before its
	// parent's entry for it is.
	slices.SortFunc(dirs, func(a, b string) int { return len(b) - len(a) })
	for _, d := range dirs {
		if err := os.Chmod(d, 0o755); err != nil { // whatever the umask
			return "", fmt.Errorf("chmod %s: %w", d, err)
		}
		if err := SyncDir(d); err != nil {
			return "", err
		}
	}
	ok = true
	return tmp, nil
}

// writeSynced creates path with data, mode 0644, and fsyncs it.
func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644) // whatever the umask
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// moveAside renames whatever is at link, unless it is a symlink or absent,
// to the first free ".<base>-previous[-N]" name.
func moveAside(link, parent, hashPrefix string) error {
	fi, err := os.Lstat(link)
	if errors.Is(err, fs.ErrNotExist) || err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspect %s: %w", link, err)
	}
	for i := range maxPreviousDirs {
		name := hashPrefix + "previous"
		if i > 0 {
			name = fmt.Sprintf("%sprevious-%d", hashPrefix, i)
		}
		aside := filepath.Join(parent, name)
		if _, err := os.Lstat(aside); !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := os.Rename(link, aside); err != nil {
			return fmt.Errorf("move aside %s to %s: %w", link, aside, err)
		}
		return nil
	}
	return fmt.Errorf("move aside %s: %d earlier copies already kept beside it", link, maxPreviousDirs)
}

// removeStale deletes link's hashed directories other than target and the
// temporary ones of interrupted swaps. Failing to is harmless: the next swap
// tries again. Moved-aside directories and anything else are left alone.
// Names are matched exactly, not by prefix: links share a parent (one per
// signer), and signer "a"'s cleanup must not take "a-b"'s or "a.tmp-1"'s
// trees.
func removeStale(parent, base, target string) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range entries {
		n := e.Name()
		if n != target && (isHashedDir(n, "."+base+"-") || isTempDir(n, "."+base+".tmp-")) {
			_ = os.RemoveAll(filepath.Join(parent, n))
		}
	}
}

// isHashedDir reports whether name is prefix followed by a content hash.
func isHashedDir(name, prefix string) bool {
	h, ok := strings.CutPrefix(name, prefix)
	return ok && len(h) == hashLen && strings.Trim(h, "0123456789abcdef") == ""
}

// isTempDir reports whether name is prefix followed by the decimal number
// os.MkdirTemp appends.
func isTempDir(name, prefix string) bool {
	n, ok := strings.CutPrefix(name, prefix)
	return ok && n != "" && strings.Trim(n, "0123456789") == ""
}
