package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/pullguard/pullguard/cmd/internal/cli"
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
	binary := fs.String("binary", "", "the pullguard node daemon binary to install on the host (default: pullguard beside this executable, as in the image)")
	kubeletConfig := fs.String("kubelet-config", "", "host path of kubelet's KubeletConfiguration when not in a usual place")
	containerdConfig := fs.String("containerd-config", installer.DefaultContainerdConfig, "host path of containerd's main config file")
	pullOnly := fs.Bool("pull-only", false, "enforce at pull time only, for runtimes without NRI validation (containerd < 2.2): "+
		"containerd's config is not touched and containers are created without asking pullguard")
	readyTimeout := fs.Duration("ready-timeout", 60*time.Second, "how long to wait for pullguard to be ready before undoing the install (kubelet untouched)")
	if err := fs.Parse(args); err != nil {
		return cli.ParseError(err)
	}
	if fs.NArg() != 0 {
		fmt.Fprintln(stderr, "pullguard-agent install: unexpected arguments:", fs.Args())
		return 2
	}
	if *binary == "" {
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintln(stderr, "pullguard-agent install: find own binary:", err)
			return 1
		}
		*binary = filepath.Join(filepath.Dir(exe), "pullguard")
	}
	root := hoststate.Root(src.hostRoot)
	cfg, pol, trust := src.paths()
	res, err := installer.Install(ctx, installer.Options{
		Root: root, Binary: *binary, ConfigFile: cfg, PoliciesDir: pol, TruststoreDir: trust,
		Validate: func(_ context.Context, b *bundle.Bundle, node hoststate.Node) error {
			return b.Validate(root, node)
		},
		KubeletConfig:    *kubeletConfig,
		ContainerdConfig: *containerdConfig,
		PullOnly:         *pullOnly,
		Services:         installer.Systemd{HostRoot: src.hostRoot},
		Probe:            installer.CRIProber{},
		ReadyTimeout:     *readyTimeout,
		Logger:           jsonLogger(stderr),
	})
	if err != nil {
		fmt.Fprintln(stderr, "pullguard", err)
		return 1
	}
	fmt.Fprintf(stdout, "pullguard installed: mode=%s layout=%s kubelet image endpoint=%s runtime endpoint (upstream)=%s runtime=%s %s drop-in=%s "+
		"changed=%t containerd restarted=%t kubelet rewired=%t\n",
		res.Mode, res.Layout, res.Endpoint, res.Upstream, res.Runtime.Name, res.Runtime.Version, res.DropIn,
		res.Changed, res.ContainerdChanged, res.KubeletRewired)
	for _, w := range res.Warnings {
		fmt.Fprintln(stdout, "WARNING:", w)
	}
	return 0
}

func runUninstall(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("uninstall", flag.ContinueOnError)
	fs.SetOutput(stderr)
	hostRoot := fs.String("host-root", defaultHostRoot, "the node's / as mounted in this container")
	kubeletConfig := fs.String("kubelet-config", "", "host path of kubelet's KubeletConfiguration when not in a usual place")
	containerdConfig := fs.String("containerd-config", installer.DefaultContainerdConfig, "host path of containerd's main config file (when install recorded none)")
	wait := fs.Bool("wait", false, "after uninstalling, block until terminated (lets the uninstall DaemonSet's pod stay Running)")
	if err := fs.Parse(args); err != nil {
		return cli.ParseError(err)
	}
	err := installer.Uninstall(ctx, installer.Options{
		Root:             hoststate.Root(*hostRoot),
		KubeletConfig:    *kubeletConfig,
		ContainerdConfig: *containerdConfig,
		Services:         installer.Systemd{HostRoot: *hostRoot},
		Logger:           jsonLogger(stderr),
	})
	if err != nil {
		fmt.Fprintln(stderr, "pullguard", err)
		return 1
	}
	fmt.Fprintln(stdout, "pullguard uninstalled: kubelet and containerd restored, service and files removed")
	if *wait {
		<-ctx.Done()
	}
	return 0
}
