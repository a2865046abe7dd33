package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/pullguard/pullguard/cmd/internal/cli"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/dynamic"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/pullguard/pullguard/config"
	"github.com/pullguard/pullguard/daemonset/policysync"
	"github.com/pullguard/pullguard/plugin/policy"
)

// runPolicySync runs the agent that renders ImagePolicy / ClusterImagePolicy objects into the
// node's synced policy directory (daemonset/policysync).
func runPolicySync(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("policy-sync", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: the pod's service account)")
	dir := fs.String("dir", "/host/etc/pullguard/crd-policies", "synced policy directory as this process sees it (the node config's [policy] synced_dir on the host)")
	nodeConfig := fs.String("node-config", "/host/etc/pullguard/config.toml", "the node's config.toml: objects naming signers it does not define, or duplicating its policies, are rejected (\"\" = do not check)")
	hostRoot := fs.String("host-root", "/host", "where the host's root is mounted: the node config's paths are the host's")
	namespace := fs.String("namespace", "", "pullguard's namespace, for the status Lease (default: $POD_NAMESPACE, else the service account's)")
	identity := fs.String("identity", "", "this agent's name in the Lease and Events (default: $NODE_NAME, else the host name)")
	health := fs.String("health-address", "", "serve /healthz and /readyz here, e.g. :9466 (\"\" = off)")
	signersDir := fs.String("signers-dir", "", "write trust stores of signers named in policies from Secrets of the same name in pullguard's namespace here, e.g. /host/etc/pullguard/signers (\"\" = off)")
	noStatus := fs.Bool("no-status", false, "never write status or Events (no leader election)")
	qps := fs.Float64("qps", 20, "API requests per second (status writes after a leader change)")
	if err := fs.Parse(args); err != nil {
		return cli.ParseError(err)
	}
	if fs.NArg() != 0 {
		fmt.Fprintln(stderr, "pullguard-agent policy-sync: unexpected arguments:", fs.Args())
		return 2
	}
	log := jsonLogger(stderr)
	// client-go logs through klog (leader election, reflector errors): into the same JSON stream.
	klog.SetSlogLogger(log)
	cfg, err := restConfig(*kubeconfig)
	if err != nil {
		fmt.Fprintln(stderr, "pullguard-agent policy-sync:", err)
		return 2
	}
	cfg.QPS, cfg.Burst = float32(*qps), int(*qps*2)
	cfg.UserAgent = "pullguard-policy-sync/" + version
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "pullguard-agent policy-sync: dynamic client:", err)
		return 2
	}
	// Only the two typed clients the agent needs, not the whole clientset.
	core, err := corev1client.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "pullguard-agent policy-sync: client:", err)
		return 2
	}
	coord, err := coordinationv1client.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "pullguard-agent policy-sync: client:", err)
		return 2
	}
	opts := policysync.Options{
		Client:        dyn,
		Events:        core,
		Leases:        coord,
		Dir:           *dir,
		Namespace:     orDefault(*namespace, podNamespace()),
		Identity:      orDefault(*identity, nodeName()),
		DisableStatus: *noStatus,
		Probe: func(ctx context.Context) error {
			return core.RESTClient().Get().AbsPath("/readyz").Do(ctx).Error()
		},
		Logger: log,
	}
	if *signersDir != "" {
		opts.SignerSecrets = &policysync.SignerSecrets{Client: core, Namespace: opts.Namespace, Dir: *signersDir}
	}
	if *nodeConfig != "" {
		path, root := *nodeConfig, *hostRoot
		opts.Signers = func() ([]string, error) { return signerNames(path) }
		opts.NodePolicies = func() ([]policy.Policy, error) { return nodePolicies(path, root) }
	}
	agent, err := policysync.New(opts)
	if err != nil {
		fmt.Fprintln(stderr, "pullguard-agent policy-sync:", err)
		return 2
	}
	if *health != "" {
		ln, err := net.Listen("tcp", *health)
		if err != nil {
			fmt.Fprintln(stderr, "pullguard-agent policy-sync: health listener:", err)
			return 2
		}
		srv := &http.Server{Handler: agent.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
	}
	if err := agent.Run(ctx); err != nil {
		fmt.Fprintln(stderr, "pullguard-agent policy-sync:", err)
		return 1
	}
	fmt.Fprintln(stdout, "pullguard-agent policy-sync: stopped;", agent.Health().Describe())
	return 0
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("no --kubeconfig and not in a pod: %w", err)
	}
	return c, nil
}

// signerNames reads the signer names of the node config without checking its paths: the agent
// sees the host's files under another root, and the daemon validates them anyway.
func signerNames(path string) ([]string, error) {
	c, err := parseNodeConfig(path)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(c.Signers))
	for _, s := range c.Signers {
		names = append(names, s.Name)
	}
	return names, nil
}

// nodePolicies returns the node's inline policies and those of its [policy] dir (read under
// root), leaving out the synced directory the agent itself writes.
func nodePolicies(path, root string) ([]policy.Policy, error) {
	c, err := parseNodeConfig(path)
	if err != nil {
		return nil, err
	}
	var out []policy.Policy
	for i := range c.Inline {
		p, err := c.Inline[i].Policy(fmt.Sprintf("%s#policies[%d]", path, i))
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	if c.Policy.Dir != "" {
		dir := filepath.Join(root, c.Policy.Dir)
		ps, err := policy.LoadDir(dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		out = append(out, ps...)
	}
	return out, nil
}

func parseNodeConfig(path string) (*config.Config, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("node config: %w", err)
	}
	if fi.Size() > config.MaxConfigBytes {
		return nil, fmt.Errorf("node config %s: larger than %d bytes", path, config.MaxConfigBytes)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("node config: %w", err)
	}
	return config.Parse(data, path)
}

const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

func podNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	if b, err := os.ReadFile(serviceAccountNamespace); err == nil && len(b) > 0 {
		return strings.TrimSpace(string(b))
	}
	return "pullguard-system"
}

func nodeName() string {
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n
	}
	h, err := os.Hostname()
	if err != nil {
		return "unknown"
	}
	return h
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
