package main

import (
	"context"
	"fmt"
	"io"

	"github.com/pullguard/pullguard/config"
)

// runValidateConfig loads a config exactly as serve would (policies
// included) and reports the first problem. Exit 0 valid, 1 invalid, 2 usage.
func runValidateConfig(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprintln(stdout, "usage: pullguard validate-config FILE\n\nloads a node config and its policies (and the signers' trust stores) as serve would; exit 0 valid, 1 invalid, 2 usage")
		return 0
	}
	if len(args) != 1 || args[0] == "" || args[0][0] == '-' {
		fmt.Fprintln(stderr, "usage: pullguard validate-config FILE")
		return 2
	}
	cfg, err := config.Load(args[0])
	if err == nil {
		_, err = assemble(ctx, cfg, shared{})
	}
	if err != nil {
		// config errors already name the file.
		fmt.Fprintf(stderr, "invalid: %v\n", err)
		return 1
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "%s: ok\n", args[0])
	return 0
}
