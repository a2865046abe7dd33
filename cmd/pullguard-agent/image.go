package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/pullguard/pullguard/cmd/internal/cli"
	"io"
	"os"
	"path/filepath"

	"github.com/pullguard/pullguard/daemonset/image"
)

// runImage builds pullguard's container image from the two static binaries
// (the agent by default this very executable, the node daemon pullguard
// beside it) and pushes it. No container engine needed.
func runImage(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ref := fs.String("ref", "", "where to push, REGISTRY/REPO[:TAG] (e.g. 127.0.0.1:5000/pullguard:v1); required")
	binary := fs.String("binary", "", "static pullguard node daemon binary to put in the image (default: pullguard beside this executable)")
	agent := fs.String("agent", "", "static pullguard-agent binary to put in the image (default: this executable)")
	cfg := fs.String("config", "daemonset/node/config.toml", "default config.toml baked into the image (\"\" for none)")
	policies := fs.String("policies", "daemonset/policies", "default policy files baked into the image (\"\" for none)")
	insecure := fs.Bool("insecure", false, "allow plain HTTP to a registry that is not on loopback")
	if err := fs.Parse(args); err != nil {
		return cli.ParseError(err)
	}
	if *ref == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: pullguard-agent image --ref REGISTRY/REPO[:TAG] [--binary FILE] [--agent FILE] [--config FILE] [--policies DIR]")
		return 2
	}
	if *agent == "" || *binary == "" {
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintln(stderr, "pullguard-agent image: find own binary:", err)
			return 1
		}
		if *agent == "" {
			*agent = exe
		}
		if *binary == "" {
			*binary = filepath.Join(filepath.Dir(exe), "pullguard")
		}
	}
	img, err := image.Build(image.Spec{Binary: *binary, Agent: *agent, Config: *cfg, PoliciesDir: *policies, Version: version})
	if err != nil {
		fmt.Fprintln(stderr, "pullguard", err)
		return 1
	}
	digest, err := image.Push(ctx, img, *ref, *insecure)
	if err != nil {
		fmt.Fprintln(stderr, "pullguard-agent image:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s@%s\n", *ref, digest)
	return 0
}
