// Command pullguard is a CRI proxy that refuses to let an image be pulled
// unless the policy of the pod's namespace admits it. Subcommands are thin:
// flags in, packages do the work.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

type command struct {
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
	summary string
}

func commands() map[string]command {
	return map[string]command{
		"serve":           {runServe, "run the CRI proxy (pullguard serve --config FILE)"},
		"check":           {runCheck, "decide on an image offline (pullguard check --config FILE --namespace NS IMAGE)"},
		"validate-config": {runValidateConfig, "check a node config file and its policies (pullguard validate-config FILE)"},
		"status":          {runStatus, "list the running containers and pullguard's verdict on each (exit 1 if any is not admitted)"},
		"install":         {runInstall, "install pullguard as a host service, make containerd require its NRI plugin and point kubelet's image service at it"},
		"uninstall":       {runUninstall, "restore kubelet's and containerd's configuration and remove pullguard from the host"},
		"sync":            {runSync, "keep the host config in sync with a mounted ConfigMap"},
		"policy-sync":     {runPolicySync, "render ImagePolicy / ClusterImagePolicy objects into the node's policy directory"},
		"image":           {runImage, "build pullguard's container image and push it"},
		"version":         {runVersion, "print the version"},
	}
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands()[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "pullguard: unknown command %q\n", args[0])
		usage(stderr)
		return 2
	}
	// Signals end commands through ctx; serve handles its own signals
	// (SIGHUP reloads, SIGTERM drains) and ignores this one's cancellation
	// semantics beyond stopping.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cmd.run(ctx, args[1:], stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: pullguard COMMAND [flags]")
	fmt.Fprintln(w, "commands:")
	for _, name := range []string{"serve", "check", "validate-config", "status", "install", "uninstall", "sync", "policy-sync", "image", "version"} {
		fmt.Fprintf(w, "  %-16s %s\n", name, commands()[name].summary)
	}
}

func runVersion(_ context.Context, _ []string, stdout, _ io.Writer) int {
	fmt.Fprintln(stdout, "pullguard", version)
	return 0
}
