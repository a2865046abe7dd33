package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/pullguard/pullguard/daemonset/bundle"
	"github.com/pullguard/pullguard/daemonset/hoststate"
	"github.com/pullguard/pullguard/daemonset/installer"
)

// Where the DaemonSet mounts its ConfigMaps (daemonset/daemonset.yaml).
const (
	defaultHostRoot = "/host"
	defaultSource   = "/etc/pullguard-src"
)

// sourceFlags are the flags install and sync share: where the config and
// policies come from and where the host is.
type sourceFlags struct {
	hostRoot, source, config, policies, truststore string
}

func (s *sourceFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.hostRoot, "host-root", defaultHostRoot, "the node's / as mounted in this container")
	fs.StringVar(&s.source, "source", defaultSource, "dir holding config/config.toml and policies/ (the mounted ConfigMaps)")
	fs.StringVar(&s.config, "config", "", "config.toml to install (default SOURCE/config/config.toml)")
	fs.StringVar(&s.policies, "policies", "", "dir of policy files to install (default SOURCE/policies; \"-\" for none)")
	fs.StringVar(&s.truststore, "truststore", "", "dir of SIGNER.pem files installed as /etc/pullguard/truststore/SIGNER (default SOURCE/truststore; \"-\" or missing: not managed)")
}

func (s *sourceFlags) paths() (config, policies, truststore string) {
	config = s.config
	if config == "" {
		config = filepath.Join(s.source, "config", "config.toml")
	}
	dirOr := func(v, def string) string {
		switch v {
		case "":
			return filepath.Join(s.source, def)
		case "-":
			return ""
		}
		return v
	}
	return config, dirOr(s.policies, "policies"), dirOr(s.truststore, "truststore")
}

func jsonLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, nil))
}

func runInstall(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("install", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var src sourceFlags
	src.register(fs)
	binary := fs.String("binary", "", "pullguard binary to install on the host (default: this executable)")
	kubeletConfig := fs.String("kubelet-config", "", "host path of kubelet's KubeletConfiguration when not in a usual place")
	readyTimeout := fs.Duration("ready-timeout", 60*time.Second, "how long to wait for pullguard to answer before giving up (kubelet untouched)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintln(stderr, "pullguard install: unexpected arguments:", fs.Args())
		return 2
	}
	if *binary == "" {
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintln(stderr, "pullguard install: find own binary:", err)
			return 1
		}
		*binary = exe
	}
	root := hoststate.Root(src.hostRoot)
	cfg, pol, trust := src.paths()
	res, err := installer.Install(ctx, installer.Options{
		Root: root, Binary: *binary, ConfigFile: cfg, PoliciesDir: pol, TruststoreDir: trust,
		Validate: func(_ context.Context, b *bundle.Bundle, node hoststate.Node) error {
			return b.Validate(root, node)
		},
		KubeletConfig: *kubeletConfig,
		Services:      installer.Systemd{HostRoot: src.hostRoot},
		Probe:         installer.CRIProber{},
		ReadyTimeout:  *readyTimeout,
		Logger:        jsonLogger(stderr),
	})
	if err != nil {
		fmt.Fprintln(stderr, "pullguard", err)
		return 1
	}
	fmt.Fprintf(stdout, "pullguard installed: layout=%s kubelet endpoint=%s upstream=%s changed=%t kubelet rewired=%t\n",
		res.Layout, res.Endpoint, res.Upstream, res.Changed, res.KubeletRewired)
	return 0
}

func runUninstall(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("uninstall", flag.ContinueOnError)
	fs.SetOutput(stderr)
	hostRoot := fs.String("host-root", defaultHostRoot, "the node's / as mounted in this container")
	kubeletConfig := fs.String("kubelet-config", "", "host path of kubelet's KubeletConfiguration when not in a usual place")
	wait := fs.Bool("wait", false, "after uninstalling, block until terminated (lets the uninstall DaemonSet's pod stay Running)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	err := installer.Uninstall(ctx, installer.Options{
		Root:          hoststate.Root(*hostRoot),
		KubeletConfig: *kubeletConfig,
		Services:      installer.Systemd{HostRoot: *hostRoot},
		Logger:        jsonLogger(stderr),
	})
	if err != nil {
		fmt.Fprintln(stderr, "pullguard", err)
		return 1
	}
	fmt.Fprintln(stdout, "pullguard uninstalled: kubelet restored, service and files removed")
	if *wait {
		<-ctx.Done()
	}
	return 0
}
