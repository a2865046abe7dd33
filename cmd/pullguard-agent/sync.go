package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/pullguard/pullguard/cmd/internal/cli"
	"github.com/pullguard/pullguard/daemonset/bundle"
	"github.com/pullguard/pullguard/daemonset/configsync"
	"github.com/pullguard/pullguard/daemonset/hoststate"
)

func runSync(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sync", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var src sourceFlags
	src.register(fs)
	interval := fs.Duration("interval", 0, "poll interval (default 5s)")
	once := fs.Bool("once", false, "sync once and exit (non-zero when rejected or failed)")
	metrics := fs.String("metrics-address", "", "serve the node daemon's /metrics, /healthz and /readyz here, read from its admin socket, e.g. :9464 (\"\" = off)")
	adminSocket := fs.String("admin-socket", "/host/run/pullguard/admin.sock", "the node daemon's admin socket as this container sees it")
	if err := fs.Parse(args); err != nil {
		return cli.ParseError(err)
	}
	root := hoststate.Root(src.hostRoot)
	cfg, pol, trust := src.paths()
	s, err := configsync.New(configsync.Options{
		Root: root, ConfigFile: cfg, PoliciesDir: pol, TruststoreDir: trust, Interval: *interval,
		Validate: func(_ context.Context, b *bundle.Bundle, node hoststate.Node) error {
			return b.Validate(root, node)
		},
		Logger: jsonLogger(stderr),
	})
	if err != nil {
		fmt.Fprintln(stderr, "pullguard-agent sync:", err)
		return 2
	}
	if *metrics != "" && !*once {
		if err := serveMetrics(ctx, *metrics, *adminSocket, jsonLogger(stderr)); err != nil {
			fmt.Fprintln(stderr, "pullguard-agent sync: metrics endpoint:", err)
			return 2
		}
	}
	if *once {
		out, err := s.SyncOnce(ctx)
		if err != nil {
			fmt.Fprintln(stderr, "pullguard", err)
			return 1
		}
		fmt.Fprintln(stdout, "pullguard-agent sync:", out)
		if out == configsync.Rejected {
			return 1
		}
		return 0
	}
	if err := s.Run(ctx); err != nil {
		fmt.Fprintln(stderr, "pullguard-agent sync:", err)
		return 1
	}
	return 0
}
