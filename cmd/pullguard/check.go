package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/pullguard/pullguard/config"
	"github.com/pullguard/pullguard/plugin/enforce"
)

// runCheck decides on one image exactly as a pull would, and prints the
// explanation a denial would carry. Exit codes: 0 admit, 1 deny, 2 error.
func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", defaultConfigPath, "node config file (TOML)")
	namespace := fs.String("namespace", "", "pod namespace (empty: the cluster policy, as for a pull without a pod)")
	verbose := fs.Bool("v", false, "also write the audit log line to stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: pullguard check [--config FILE] [--namespace NS] IMAGE")
		return 2
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "pullguard check: %v\n", err)
		return 2
	}
	log := slog.New(slog.DiscardHandler)
	if *verbose {
		log = newLogger(cfg, stderr)
	}
	comp, err := assemble(ctx, cfg, log, nil)
	if err != nil {
		fmt.Fprintf(stderr, "pullguard check: %v\n", err)
		return 2
	}
	d := comp.engine.Decide(ctx, enforce.Request{Op: enforce.OpCheck, Namespace: *namespace, Image: fs.Arg(0)})
	printDecision(stdout, d)
	switch {
	case d.Category == enforce.InvalidImage:
		return 2
	case d.Denied():
		return 1
	}
	return 0
}

func printDecision(w io.Writer, d *enforce.Decision) {
	verdict := string(d.Verdict)
	if d.Audited {
		verdict += " (audit mode: would deny)"
	}
	ns := d.Namespace
	if ns == "" {
		ns = "(none: cluster policy)"
	}
	fmt.Fprintf(w, "verdict:   %s\n", verdict)
	fmt.Fprintf(w, "image:     %s\n", d.Image)
	fmt.Fprintf(w, "namespace: %s\n", ns)
	if d.Digest != "" {
		fmt.Fprintf(w, "digest:    %s\n", d.Digest)
	}
	if d.Policy != "" {
		fmt.Fprintf(w, "policy:    %s\n", d.Policy)
	}
	if d.Rule != "" {
		fmt.Fprintf(w, "rule:      %q\n", d.Rule)
	}
	fmt.Fprintf(w, "reason:    %s\n", d.Reason)
	for _, line := range d.Details {
		fmt.Fprintf(w, "  %s\n", line)
	}
	if d.Denied() || d.Audited {
		fmt.Fprintf(w, "message:   %s\n", d.Message())
	}
}
