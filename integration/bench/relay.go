package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// The relay is the floor any out-of-process CRI proxy pays here: a separate process that copies
// bytes between a unix socket and containerd's, understanding nothing. Timing it next to
// pullguard separates the cost of an extra process hop on this machine (scheduling, syscalls)
// from the cost of pullguard's gRPC handling.

// serveRelay runs in the relay process (see helperProcess): it accepts on listen and pipes every
// connection to upstream until killed.
func serveRelay(listen, upstream string) error {
	l, err := net.Listen("unix", listen)
	if err != nil {
		return fmt.Errorf("relay listen: %w", err)
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return fmt.Errorf("relay accept: %w", err)
		}
		go pipe(c, upstream)
	}
}

func pipe(c net.Conn, upstream string) {
	defer c.Close()
	u, err := net.Dial("unix", upstream)
	if err != nil {
		return
	}
	defer u.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _, _ = io.Copy(u, c); _ = u.(*net.UnixConn).CloseWrite() }()
	go func() { defer wg.Done(); _, _ = io.Copy(c, u); _ = c.(*net.UnixConn).CloseWrite() }()
	wg.Wait()
}

// startRelay starts this program again as a relay in front of upstream and waits until its
// socket answers. It returns the socket and the relay's pid.
func startRelay(ctx context.Context, dir, upstream string) (string, int, func(), error) {
	self, err := os.Executable()
	if err != nil {
		return "", 0, nil, fmt.Errorf("start relay: %w", err)
	}
	sock := filepath.Join(dir, "relay.sock")
	cmd := exec.Command(self, "-relay-serve", sock, "-relay-upstream", upstream)
	cmd.Stderr = os.Stderr
	// Gone with the benchmark, however it ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return "", 0, nil, fmt.Errorf("start relay: %w", err)
	}
	stop := func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = os.Remove(sock)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			_ = c.Close()
			return sock, cmd.Process.Pid, stop, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stop()
			return "", 0, nil, errors.Join(fmt.Errorf("relay on %s did not come up", sock), err, ctx.Err())
		}
		<-time.After(20 * time.Millisecond) // poll interval
	}
}
