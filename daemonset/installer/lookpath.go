package installer

import (
	"fmt"
	"os"
	"path/filepath"
)

// lookPathIn finds name in the usual bin dirs below root and returns its path
// as seen after chroot(root).
func lookPathIn(root, name string) (string, error) {
	for _, dir := range []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(filepath.Join(root, p)); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found on the host (below %s)", name, root)
}
