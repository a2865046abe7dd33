package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/pullguard/pullguard/cmd/internal/cli"
	"github.com/pullguard/pullguard/daemonset/workloads"
	"github.com/pullguard/pullguard/plugin/running"
)

// runRunning writes the Events and evictions for the running containers the
// node daemon no longer admits (daemonset/workloads).
func runRunning(ctx context.Context, args []string, _, stderr io.Writer) int {
	fs := flag.NewFlagSet("running", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: the pod's service account)")
	adminSocket := fs.String("admin-socket", "/host/run/pullguard/admin.sock", "the node daemon's admin socket as this process sees it")
	node := fs.String("node", os.Getenv("NODE_NAME"), "this node's name: only pods bound to it are evicted (default: $NODE_NAME)")
	interval := fs.Duration("interval", 10*time.Second, "how often the daemon's status is read")
	if err := fs.Parse(args); err != nil {
		return cli.ParseError(err)
	}
	if fs.NArg() != 0 || *node == "" {
		fmt.Fprintln(stderr, "usage: pullguard-agent running --node NAME [--admin-socket PATH] [--kubeconfig FILE]")
		return 2
	}
	log := jsonLogger(stderr)
	klog.SetSlogLogger(log)
	cfg, err := restConfig(*kubeconfig)
	if err != nil {
		fmt.Fprintln(stderr, "pullguard-agent running:", err)
		return 2
	}
	cfg.UserAgent = "pullguard-running/" + version
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "pullguard-agent running: client:", err)
		return 2
	}
	agent := workloads.New(workloads.Options{
		Client: client, Node: *node, Interval: *interval, Logger: log,
		Status: func(ctx context.Context) (*running.Status, error) {
			st, _, err := running.FetchStatus(ctx, *adminSocket)
			return st, err
		},
	})
	log.Info("acting on running workloads pullguard no longer admits", "node", *node, "admin_socket", *adminSocket)
	if err := agent.Run(ctx); err != nil {
		fmt.Fprintln(stderr, "pullguard-agent running:", err)
		return 1
	}
	return 0
}
