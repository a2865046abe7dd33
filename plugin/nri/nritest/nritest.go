// Package nritest helps tests check their reading of containerd's config against containerd's
// own loader, when the pinned containerd is installed.
package nritest

import (
	"os"
	"path/filepath"
	"testing"
)

// ContainerdBinary is the pinned containerd (PULLGUARD_TOOLS_BIN, else the repository's
// .tools/bin), or "" when it is not installed.
func ContainerdBinary(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("PULLGUARD_TOOLS_BIN")
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			t.Fatal(err)
		}
		for d := wd; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				dir = filepath.Join(d, ".tools", "bin")
				break
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	p := filepath.Join(dir, "containerd")
	if fi, err := os.Stat(p); err != nil || fi.IsDir() {
		t.Log("containerd not installed (make tools); not checking against containerd's own loader")
		return ""
	}
	return p
}
