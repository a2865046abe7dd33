// Package testbed runs the real components pullguard sits between -- a distribution registry,
// containerd v2 with its CRI plugin, runc, crictl -- under one temporary directory, on loopback
// and unix sockets only, for the end-to-end tests, the demo and the benchmarks.
package testbed

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// ErrToolsMissing is wrapped by errors that mean the pinned tools have not been installed.
var ErrToolsMissing = errors.New("integration tools missing: run `make tools` (bash integration/tools/install.sh)")

// modulePath identifies the repository root when walking up from the working directory.
const modulePath = "module github.com/pullguard/pullguard\n"

// Tools holds the absolute paths of the binaries the bed runs.
type Tools struct {
	Dir        string // PULLGUARD_TOOLS_BIN or <repo>/.tools/bin
	Containerd string
	Ctr        string
	Shim       string // containerd-shim-runc-v2; containerd finds it through PATH
	Registry   string
	Crictl     string
	Notation   string
	Oras       string
	Crane      string
	Runc       string // from the OS (Debian's runc)
	Busybox    string // a statically linked busybox, copied into test images
}

// RepoRoot finds the pullguard repository root by walking up from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repo root: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(b, []byte(modulePath)) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find repo root: no go.mod of github.com/pullguard/pullguard above the working directory")
		}
		dir = parent
	}
}

// FindTools locates the pinned tools (env PULLGUARD_TOOLS_BIN, else <repo>/.tools/bin) and the
// OS-provided runc and busybox. The error wraps ErrToolsMissing and names every missing file.
func FindTools() (Tools, error) {
	dir := os.Getenv("PULLGUARD_TOOLS_BIN")
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			return Tools{}, err
		}
		dir = filepath.Join(root, ".tools", "bin")
	}
	t := Tools{
		Dir:        dir,
		Containerd: filepath.Join(dir, "containerd"),
		Ctr:        filepath.Join(dir, "ctr"),
		Shim:       filepath.Join(dir, "containerd-shim-runc-v2"),
		Registry:   filepath.Join(dir, "registry"),
		Crictl:     filepath.Join(dir, "crictl"),
		Notation:   filepath.Join(dir, "notation"),
		Oras:       filepath.Join(dir, "oras"),
		Crane:      filepath.Join(dir, "crane"),
		Runc:       lookOS("runc"),
		Busybox:    "/bin/busybox",
	}
	var missing []string
	for _, p := range []string{t.Containerd, t.Ctr, t.Shim, t.Registry, t.Crictl, t.Notation, t.Oras, t.Crane, t.Runc, t.Busybox} {
		if fi, err := os.Stat(p); err != nil || fi.IsDir() {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return t, fmt.Errorf("%w: not found: %v", ErrToolsMissing, missing)
	}
	return t, nil
}

// lookOS finds a binary in PATH or the sbin directories a non-login root shell may lack.
func lookOS(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return name
}
