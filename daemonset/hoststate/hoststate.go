// Package hoststate knows where pullguard lives on a node's filesystem and
// what the installer left there (backups of kubelet's and containerd's
// files, the node's settings: runtime endpoint, NRI mode and containerd's
// NRI socket). Both the installer and the config syncer write through it so
// they agree on paths and on the node's settings.
package hoststate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Host paths, absolute as seen on the node. Join them with a host root
// (the node's / mounted into the installer pod) before touching them.
const (
	BinaryPath   = "/usr/local/bin/pullguard"
	ConfigDir    = "/etc/pullguard"
	ConfigPath   = "/etc/pullguard/config.toml"
	PoliciesPath = "/etc/pullguard/policies"
	// TruststorePath holds one directory per signer when the DaemonSet
	// manages trust stores: trust_store = "/etc/pullguard/truststore/NAME".
	TruststorePath = "/etc/pullguard/truststore"
	UnitName       = "pullguard.service"
	UnitPath       = "/etc/systemd/system/pullguard.service"
	StateDir       = "/var/lib/pullguard/install"
	StatePath      = "/var/lib/pullguard/install/state.json"
	BackupDir      = "/var/lib/pullguard/install/backup"
)

// DefaultSocket is the socket pullguard listens on when config.toml leaves
// [server].socket empty (CONFIG_SCHEMA.md).
const DefaultSocket = "/run/pullguard/pullguard.sock"

// Root is the node's root filesystem as mounted in this process.
type Root string

// Path maps an absolute host path to where it is reachable from here.
func (r Root) Path(hostPath string) string {
	return filepath.Join(string(r), filepath.FromSlash(hostPath))
}

// Backup records one host file the installer changed and where its
// original bytes are kept.
type Backup struct {
	HostPath   string      `json:"hostPath"`   // e.g. /var/lib/kubelet/config.yaml
	BackupPath string      `json:"backupPath"` // host path of the copy, under BackupDir
	Mode       fs.FileMode `json:"mode"`
	// Absent is true when the installer created the file: restoring it
	// removes it.
	Absent bool `json:"absent,omitempty"`
}

// State is what a successful install leaves behind for uninstall and sync.
type State struct {
	Version  int    `json:"version"`
	Layout   string `json:"layout"`   // kubeadm | kubelet-config
	Upstream string `json:"upstream"` // kubelet's runtime endpoint (containerd), pullguard's upstream
	Socket   string `json:"socket"`   // host path of pullguard's socket, kubelet's image endpoint
	// KubeletWired is true once kubelet's image endpoint is pullguard's.
	KubeletWired bool     `json:"kubeletWired"`
	Backups      []Backup `json:"backups,omitempty"` // kubelet's files

	// NRIMode is the [nri] mode install chose for the node: enforce, or
	// pull-only when asked for (--pull-only). "" in states written before
	// pullguard had an NRI side.
	NRIMode string `json:"nriMode,omitempty"`
	// NRI is containerd's side of the gate, in enforce mode.
	NRI *NodeNRI `json:"nri,omitempty"`
	// ContainerdWired is true once containerd's config requires pullguard
	// through the files in ContainerdBackups.
	ContainerdWired   bool     `json:"containerdWired,omitempty"`
	ContainerdBackups []Backup `json:"containerdBackups,omitempty"`
	// CreatedDirs are directories install created for containerd's drop-in;
	// uninstall removes them when they are empty.
	CreatedDirs []string `json:"createdDirs,omitempty"`
}

// Node returns the node's settings recorded by install, which every
// config.toml written to the node carries.
func (s *State) Node() Node {
	return Node{Upstream: s.Upstream, NRIMode: s.NRIMode, NRI: s.NRI}
}

const stateVersion = 1

// maxStateBytes bounds what we read back; the state file is tiny.
const maxStateBytes = 1 << 20

// LoadState reads the install state. It returns (nil, nil) when pullguard
// was never installed on this host.
func LoadState(root Root) (*State, error) {
	p := root.Path(StatePath)
	data, err := readBounded(p, maxStateBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read install state: %w", err)
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("parse install state %s: %w", p, err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("install state %s has version %d, this pullguard understands %d", p, s.Version, stateVersion)
	}
	return &s, nil
}

// SaveState writes the install state atomically.
func SaveState(root Root, s *State) error {
	s.Version = stateVersion
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode install state: %w", err)
	}
	if err := os.MkdirAll(root.Path(StateDir), 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	if err := WriteFileAtomic(root.Path(StatePath), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("save install state: %w", err)
	}
	return nil
}

// WriteFileAtomic replaces path with data so that readers see either the old
// or the new content, never a mix: temp file in the same dir, fsync, rename.
func WriteFileAtomic(path string, data []byte, mode fs.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temp file for %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	ok = true
	// The new content is in place either way; a failed sync only leaves
	// the rename less durable, which a caller could do nothing about.
	_ = SyncDir(dir)
	return nil
}

// SyncDir makes a directory's entries (creations, renames, removals)
// durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// ReadBounded reads a whole file, refusing files larger than limit.
func ReadBounded(path string, limit int64) ([]byte, error) { return readBounded(path, limit) }

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return data, nil
}

// SocketEndpoint turns a socket path into the endpoint form kubelet expects.
func SocketEndpoint(socket string) string {
	if strings.HasPrefix(socket, "unix://") {
		return socket
	}
	return "unix://" + socket
}
