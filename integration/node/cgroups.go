package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pullguard/pullguard/integration/testbed"
)

// hierarchy is one mounted cgroup hierarchy and the test process's cgroup in it.
type hierarchy struct {
	mount string // where it is mounted, e.g. /sys/fs/cgroup/memory
	self  string // this process's cgroup path in it, e.g. /process_api/0158...
}

// hierarchies lists the machine's cgroup hierarchies (v1 controllers, name=systemd, and the
// unified v2 one of a hybrid host) with this process's place in each.
func hierarchies() ([]hierarchy, error) {
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("read own cgroups: %w", err)
	}
	// "ID:controllers:path"; controllers is "" for v2, "name=systemd" for a named hierarchy.
	selfBy := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(own)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 {
			selfBy[parts[1]] = parts[2]
		}
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []hierarchy
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, x := range fields {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+3 >= len(fields) || len(fields) < 5 {
			continue
		}
		fstype, opts := fields[sep+1], fields[sep+3]
		mp := testbed.UnescapeMount(fields[4])
		switch fstype {
		case "cgroup2":
			out = append(out, hierarchy{mount: mp, self: selfBy[""]})
		case "cgroup":
			// Its line in /proc/self/cgroup is keyed by its controllers (or name=...), which
			// are among the mount's super options.
			have := map[string]bool{}
			for _, o := range strings.Split(opts, ",") {
				have[o] = true
			}
			self, found := "", false
			for key, path := range selfBy {
				if key == "" {
					continue
				}
				all := true
				for _, c := range strings.Split(key, ",") {
					all = all && have[c]
				}
				if all {
					self, found = path, true
					break
				}
			}
			if !found {
				return nil, fmt.Errorf("cgroup hierarchy %s (%s): not in /proc/self/cgroup", mp, opts)
			}
			out = append(out, hierarchy{mount: mp, self: self})
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no cgroup hierarchy mounted")
	}
	return out, sc.Err()
}

// createCgroups makes the node's cgroup in every hierarchy, below this process's own, so the
// node counts against whatever limits the test runs under.
func createCgroups(name string) ([]string, error) {
	hs, err := hierarchies()
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, h := range hs {
		parent := filepath.Join(h.mount, h.self)
		dir := filepath.Join(parent, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return dirs, fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		dirs = append(dirs, dir)
		// A new v1 cpuset has no CPUs and no memory nodes: nothing could join it.
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			b, err := os.ReadFile(filepath.Join(parent, f))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			} else if err != nil {
				return dirs, fmt.Errorf("read %s: %w", f, err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
				return dirs, fmt.Errorf("set %s of %s: %w", f, dir, err)
			}
		}
	}
	return dirs, nil
}

// removeCgroups kills what still runs in the cgroups and removes them, children first. A
// cgroup whose last task has just died can refuse removal for a moment: retried until the
// deadline.
func removeCgroups(ctx context.Context, dirs []string) error {
	return poll(ctx, 30*time.Second, "remove the node's cgroups", func(context.Context) error {
		var errs []error
		for _, d := range dirs {
			if err := removeTree(d); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
}

func removeTree(dir string) error {
	var subdirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			subdirs = append(subdirs, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Deepest first.
	sort.Slice(subdirs, func(i, j int) bool { return len(subdirs[i]) > len(subdirs[j]) })
	var errs []error
	for _, d := range subdirs {
		testbed.KillCgroupProcs(d)
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// sweepStale removes what an earlier test process left behind when it died before stopping
// its node (a killed `go test`): node cgroups named after a process that no longer exists,
// with whatever still runs in them, and that run's directory under /tmp. Nodes of live
// processes (other tests on the machine) are never touched.
func sweepStale(ctx context.Context) error {
	hs, err := hierarchies()
	if err != nil {
		return err
	}
	var stale []string
	for _, h := range hs {
		// Node cgroups sit below some test process's cgroup: look a few levels deep.
		_ = filepath.WalkDir(h.mount, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			if strings.Count(strings.TrimPrefix(p, h.mount), "/") > 4 {
				return filepath.SkipDir
			}
			if pid, ok := nodeOwner(d.Name()); ok {
				if syscall.Kill(pid, 0) == syscall.ESRCH {
					stale = append(stale, p)
				}
				return filepath.SkipDir
			}
			return nil
		})
	}
	var errs []error
	if len(stale) > 0 {
		errs = append(errs, removeCgroups(ctx, stale))
	}
	// Its directory (registry data, the node's root) goes too, once nothing is mounted there.
	dirs, _ := filepath.Glob("/tmp/pgnode-*")
	for _, d := range dirs {
		pid, ok := nodeOwner(filepath.Base(d))
		if !ok || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		if m, err := mountedUnder(d); err != nil || len(m) > 0 {
			errs = append(errs, fmt.Errorf("stale %s left in place: mounts %v (%v)", d, m, err))
			continue
		}
		errs = append(errs, os.RemoveAll(d))
	}
	return errors.Join(errs...)
}

// mountedUnder lists the mount points (in this process's mount namespace) at or below dir.
func mountedUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			if mp := testbed.UnescapeMount(f[4]); mp == dir || strings.HasPrefix(mp, dir+"/") {
				out = append(out, mp)
			}
		}
	}
	return out, nil
}

// nodeOwner is the PID in a node's name (pgnode-PID-N, see Start): a later run tells a dead
// run's leftovers from a live one's by it.
func nodeOwner(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "pgnode-")
	if !ok {
		return 0, false
	}
	pidStr, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidStr)
	return pid, err == nil && pid > 0
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
