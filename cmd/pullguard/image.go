package main

import (
	"context"
	"fmt"
	"io"
)

// Placeholder until image building lands; the daemonset owner replaces this file.
func runImage(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "pullguard image: not implemented yet")
	return 2
}
