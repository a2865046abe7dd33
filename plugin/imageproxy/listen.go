package imageproxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// DefaultSocketMode is the permission of the listening socket when Listen is
// given mode 0: owner and group may connect, nobody else.
const DefaultSocketMode os.FileMode = 0o660

// socketDirMode is used for a parent directory Listen has to create.
const socketDirMode os.FileMode = 0o750

// staleDialTimeout bounds the probe that tells a live socket from one left
// behind by a crash.
const staleDialTimeout = time.Second

// Listen opens the unix socket kubelet connects to.
//
// The parent directory is created if missing. A socket file nobody answers on
// (left by a crash) is replaced; a socket some process still serves is never
// taken over, nor is a path that is not a socket. The socket is chmod-ed to
// mode (DefaultSocketMode when 0) and, if group is non-empty (a name or a
// numeric id), chown-ed to that group.
//
// The returned listener unlinks the socket file when closed (Server.Shutdown
// closes it).
func Listen(path string, mode os.FileMode, group string) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("listen: empty socket path")
	}
	if mode == 0 {
		mode = DefaultSocketMode
	}
	gid := -1
	if group != "" {
		g, err := lookupGroup(group)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", path, err)
		}
		gid = g
	}
	if err := os.MkdirAll(filepath.Dir(path), socketDirMode); err != nil {
		return nil, fmt.Errorf("listen on %s: create parent directory: %w", path, err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, mode.Perm()); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("listen on %s: chmod %o: %w", path, mode.Perm(), err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			_ = l.Close()
			return nil, fmt.Errorf("listen on %s: chown to group %s: %w", path, group, err)
		}
	}
	return l, nil
}

// removeStaleSocket clears path for a new listener, refusing to touch anything
// that is not a dead socket.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspect existing path: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("path exists and is not a socket (%s); refusing to replace it", fi.Mode().Type())
	}
	conn, err := net.DialTimeout("unix", path, staleDialTimeout)
	if err == nil {
		_ = conn.Close()
		return errors.New("socket is in use by a running process (another pullguard?); refusing to take it over")
	}
	// Only "nobody listens" proves the socket is stale. A timeout or a
	// permission problem says nothing about liveness, so keep hands off.
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("probe existing socket: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

func lookupGroup(group string) (int, error) {
	if id, err := strconv.Atoi(group); err == nil {
		if id < 0 {
			return 0, fmt.Errorf("invalid group id %d", id)
		}
		return id, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("look up group %q: %w", group, err)
	}
	id, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("group %q has non-numeric id %q", group, g.Gid)
	}
	return id, nil
}
