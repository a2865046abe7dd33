package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/pullguard/pullguard/cmd/internal/cli"
	"io"
	"text/tabwriter"
	"time"

	"github.com/pullguard/pullguard/config"
	"github.com/pullguard/pullguard/plugin/running"
)

// runStatus prints the running containers the daemon sees, with its verdict
// on each. It asks the running daemon over its admin socket, never kubelet.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", defaultConfigPath, "node config file (names the admin socket)")
	socket := fs.String("socket", "", "admin socket of the daemon (default: [server] admin_socket of --config)")
	output := fs.String("o", "table", "output: table or json")
	if err := fs.Parse(args); err != nil {
		return cli.ParseError(err)
	}
	if *output != "table" && *output != "json" {
		fmt.Fprintf(stderr, "pullguard status: -o %q: want table or json\n", *output)
		return 2
	}
	if *socket == "" {
		cfg, err := config.Load(*configPath)
		if err != nil {
			fmt.Fprintf(stderr, "pullguard status: %v (or give --socket)\n", err)
			return 2
		}
		*socket = cfg.Server.AdminSocket
	}
	st, raw, err := running.FetchStatus(ctx, *socket)
	if err != nil {
		fmt.Fprintf(stderr, "pullguard status: %v\n", err)
		return 2
	}
	if *output == "json" {
		_, _ = stdout.Write(raw)
	} else {
		printStatus(stdout, st)
	}
	for _, c := range st.Containers {
		if c.Verdict != running.Admitted {
			return 1
		}
	}
	return 0
}

func printStatus(w io.Writer, st *running.Status) {
	if !st.Synchronized {
		fmt.Fprintln(w, "containerd has not listed its containers to pullguard yet (the NRI plugin is not registered)")
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tPOD\tCONTAINER\tIMAGE\tDIGEST\tVERDICT\tSINCE\tACTION\tREASON")
	for _, c := range st.Containers {
		action := c.Action
		switch {
		case c.EvictAt != nil:
			action += " at " + c.EvictAt.UTC().Format(time.RFC3339)
		case c.NoEviction != "" && c.Verdict == running.Denied:
			action += " (" + c.NoEviction + ")"
		}
		reason := ""
		if c.Verdict != running.Admitted {
			reason = c.Reason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Pod.Namespace, c.Pod.Name, c.Name, orDash(c.Image), shortDigest(c.Digest),
			c.Verdict, c.Since.UTC().Format(time.RFC3339), action, reason)
	}
	_ = tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// shortDigest keeps the table readable; -o json has the whole digest.
func shortDigest(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return orDash(d)
}
