package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/pullguard/pullguard/cmd/internal/cli"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/pullguard/pullguard/config"
	"github.com/pullguard/pullguard/plugin/enforce"
	"github.com/pullguard/pullguard/plugin/registry"
)

// runCheck decides on one image exactly as a pull would, and prints the
// explanation a denial would carry. Exit codes: 0 admit, 1 deny, 2 error.
func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", defaultConfigPath, "node config file (TOML)")
	namespace := fs.String("namespace", "", "pod namespace (empty: the cluster policy, as for a pull without a pod)")
	username := fs.String("username", "", "registry user name for a private registry")
	passwordStdin := fs.Bool("password-stdin", false, "read the registry password from standard input (keeps it out of ps and shell history)")
	dockerConfig := fs.String("docker-config", "", "read registry credentials from a docker config.json (auths)")
	verbose := fs.Bool("v", false, "also write the audit log line to stderr")
	if err := fs.Parse(args); err != nil {
		return cli.ParseError(err)
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: pullguard check [--config FILE] [--namespace NS] [--username U --password-stdin | --docker-config FILE] IMAGE")
		return 2
	}
	creds, err := checkCredentials(*username, *passwordStdin, *dockerConfig, os.Stdin)
	if err != nil {
		fmt.Fprintf(stderr, "pullguard check: %v\n", err)
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
	comp, err := assemble(ctx, cfg, shared{log: log})
	if err != nil {
		fmt.Fprintf(stderr, "pullguard check: %v\n", err)
		return 2
	}
	d := comp.engine.Decide(ctx, enforce.Request{Op: enforce.OpCheck, Namespace: *namespace, Image: fs.Arg(0), Credentials: creds})
	printDecision(stdout, d)
	switch {
	case d.Category == enforce.InvalidImage:
		return 2
	case d.Denied():
		return 1
	}
	return 0
}

// checkCredentials returns the credentials lookup for check's flags.
func checkCredentials(username string, passwordStdin bool, dockerConfig string, stdin io.Reader) (registry.CredentialFunc, error) {
	switch {
	case username != "" && dockerConfig != "":
		return nil, errors.New("--username and --docker-config are exclusive")
	case username != "":
		var password string
		if passwordStdin {
			line, err := bufio.NewReader(stdin).ReadString('\n')
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("read password from stdin: %w", err)
			}
			password = strings.TrimRight(line, "\r\n")
		}
		c := &registry.Credentials{Username: username, Password: password}
		return func(string, string) *registry.Credentials { return c }, nil
	case passwordStdin:
		return nil, errors.New("--password-stdin needs --username")
	case dockerConfig != "":
		return registry.LoadDockerConfig(dockerConfig)
	}
	return nil, nil
}

func printDecision(w io.Writer, d *enforce.Decision) {
	verdict := string(d.Verdict)
	switch {
	case d.Audited:
		verdict += " (audit mode: would deny)"
	case d.FailedOpen:
		verdict += " (fail_open: registry unavailable, checks skipped)"
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
	if d.PinnedRef != "" {
		fmt.Fprintf(w, "pinned:    %s\n", d.PinnedRef)
	}
	if d.Policy != "" {
		fmt.Fprintf(w, "policy:    %s\n", d.Policy)
	}
	if d.Rule != "" {
		fmt.Fprintf(w, "rule:      %q\n", d.Rule)
	}
	fmt.Fprintf(w, "reason:    %s\n", d.Reason)
	if len(d.Details) > 0 {
		fmt.Fprintln(w, "details:")
		for _, line := range d.Details {
			fmt.Fprintf(w, "  %s\n", line)
		}
	}
	if d.Denied() || d.Audited || d.FailedOpen {
		fmt.Fprintf(w, "message:   %s\n", d.Message())
	}
}
