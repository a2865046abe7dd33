package main

import (
	"context"
	"fmt"
	"io"
)

// Placeholder until config sync lands; the daemonset owner replaces this file.
func runSync(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "pullguard sync: not implemented yet")
	return 2
}
