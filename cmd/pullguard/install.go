package main

import (
	"context"
	"fmt"
	"io"
)

// Placeholder until the DaemonSet installer lands; the daemonset owner replaces this file.
func runInstall(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "pullguard install: not implemented yet")
	return 2
}

func runUninstall(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "pullguard uninstall: not implemented yet")
	return 2
}
