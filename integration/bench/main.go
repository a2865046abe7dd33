// Command bench measures what pullguard adds to unary CRI calls: it starts a real registry +
// containerd (integration/testbed), fills containerd with host-network pod sandboxes and
// containers, starts pullguard in front of it, then times the same calls straight to containerd
// and through pullguard, interleaved in one run, and prints p50/p99, the added latency and the
// ratio against the targets (issue 2 item 9).
//
//	go run ./integration/bench [-n 2000] [-pods 50] [-proxy binary|inprocess] [-strict]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullguard/pullguard/integration/testbed"
	"github.com/pullguard/pullguard/plugin/imageproxy"
)

type options struct {
	iterations int
	warmup     int
	pods       int
	proxyMode  string
	strict     bool
	verbose    bool
	relay      bool
	pgProcs    int
}

func main() {
	var o options
	flag.IntVar(&o.iterations, "n", 2000, "timed iterations per call and target")
	flag.IntVar(&o.warmup, "warmup", 200, "untimed iterations per call and target first")
	flag.IntVar(&o.pods, "pods", 50, "host-network pod sandboxes (one container each) to create")
	flag.StringVar(&o.proxyMode, "proxy", "binary", `"binary": pullguard serve as its own process (as deployed); "inprocess": plugin/proxy inside this program`)
	flag.BoolVar(&o.strict, "strict", false, "exit 1 when a target is missed")
	flag.BoolVar(&o.verbose, "v", false, "log test-bed progress")
	flag.BoolVar(&o.relay, "relay", true, "also time a byte-copying relay process: the floor of any extra hop on this machine")
	flag.IntVar(&o.pgProcs, "pullguard-gomaxprocs", 0, "GOMAXPROCS for the pullguard process (0: Go's default)")
	relayServe := flag.String("relay-serve", "", "internal: run as the relay, listening on this socket")
	relayUpstream := flag.String("relay-upstream", "", "internal: the relay's upstream socket")
	flag.Parse()
	if *relayServe != "" {
		if err := serveRelay(*relayServe, *relayUpstream); err != nil {
			fmt.Fprintln(os.Stderr, "bench relay:", err)
			os.Exit(2)
		}
		return
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	missed, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if missed && o.strict {
		os.Exit(1)
	}
}

// run brings the bed up, measures, prints the report and tears everything down. It reports
// whether a target was missed.
func run(ctx context.Context, o options) (missed bool, err error) {
	if o.iterations < 10 || o.pods < 1 || o.warmup < 0 {
		return false, errors.New("need -n >= 10, -pods >= 1, -warmup >= 0")
	}
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	bed, err := testbed.Start(ctx, testbed.Options{Logger: log})
	if err != nil {
		return false, fmt.Errorf("start test bed: %w", err)
	}
	defer func() {
		// Teardown must run even after Ctrl-C.
		if cerr := bed.Close(context.WithoutCancel(ctx)); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close test bed: %w", cerr))
		}
	}()

	fmt.Fprintf(os.Stderr, "creating %d host-network pods with one container each...\n", o.pods)
	bulk, err := bed.CreatePods(ctx, testbed.BulkOptions{Pods: o.pods, ContainersPerPod: 1})
	if err != nil {
		return false, fmt.Errorf("create pods: %w", err)
	}

	proxySock, proxyPid, stopProxy, err := startProxy(ctx, bed, o)
	if err != nil {
		return false, err
	}
	defer stopProxy()

	direct, err := testbed.DialCRI(bed.Containerd.Socket)
	if err != nil {
		return false, err
	}
	defer direct.Close()
	via, err := testbed.DialCRI(proxySock)
	if err != nil {
		return false, err
	}
	defer via.Close()
	var (
		relayed  *testbed.CRIClient
		relayPid int
	)
	if o.relay {
		sock, pid, stopRelay, err := startRelay(ctx, bed.Dir, bed.Containerd.Socket)
		if err != nil {
			return false, err
		}
		defer stopRelay()
		relayPid = pid
		if relayed, err = testbed.DialCRI(sock); err != nil {
			return false, err
		}
		defer relayed.Close()
	}

	// The figures only mean something next to the machine's load: a busy machine delays the
	// proxy's extra wake-ups most.
	loadBefore := loadAverage()
	calls := benchCalls(bed.Pause.Ref, len(bulk.ContainerIDs), len(bulk.PodIDs))
	results := make([]result, 0, len(calls))
	for _, c := range calls {
		fmt.Fprintf(os.Stderr, "measuring %s...\n", c.name)
		pgCPU, relayCPU := startCPU(proxyPid), startCPU(relayPid)
		r, err := measure(ctx, c, direct, via, relayed, o.warmup, o.iterations)
		if err != nil {
			return false, fmt.Errorf("measure %s: %w", c.name, err)
		}
		r.proxyCPU = pgCPU.perCall(o.warmup + o.iterations)
		r.relayCPU = relayCPU.perCall(o.warmup + o.iterations)
		results = append(results, r)
	}
	header := fmt.Sprintf("pullguard CRI pass-through overhead: containerd v2.4.2, %d pod sandboxes, %d containers, "+
		"%d interleaved iterations per call and target after %d warm-up, proxy=%s (pullguard GOMAXPROCS %s), %d CPUs, load average before/after %s / %s",
		len(bulk.PodIDs), len(bulk.ContainerIDs), o.iterations, o.warmup, o.proxyMode, procsLabel(o.pgProcs), numCPU(), loadBefore, loadAverage())
	return printReport(os.Stdout, header, results), nil
}

// startProxy starts pullguard in front of the bed's containerd and returns its socket and, when
// it runs as its own process, its pid.
func startProxy(ctx context.Context, bed *testbed.Bed, o options) (string, int, func(), error) {
	switch o.proxyMode {
	case "binary":
		var env []string
		if o.pgProcs > 0 {
			env = append(env, fmt.Sprintf("GOMAXPROCS=%d", o.pgProcs))
		}
		// No policies: the measured calls are never gated.
		pg, err := bed.StartPullguard(ctx, testbed.PullguardOptions{Env: env})
		if err != nil {
			return "", 0, nil, fmt.Errorf("start pullguard (try -proxy inprocess to measure the proxy package alone): %w", err)
		}
		return pg.Socket, pg.Process().Pid(), func() { _ = pg.Stop() }, nil
	case "inprocess":
		srv, err := imageproxy.New(imageproxy.Options{Upstream: bed.Containerd.Socket})
		if err != nil {
			return "", 0, nil, fmt.Errorf("create in-process proxy: %w", err)
		}
		sock := filepath.Join(bed.Dir, "benchpg", "pg.sock")
		l, err := imageproxy.Listen(sock, 0, "")
		if err != nil {
			return "", 0, nil, err
		}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(l) }()
		return sock, 0, func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
			<-served
		}, nil
	default:
		return "", 0, nil, fmt.Errorf("unknown -proxy %q (binary or inprocess)", o.proxyMode)
	}
}

// benchCall is one unary CRI call; check validates a response so that a proxy answering fast
// but wrongly cannot look good.
type benchCall struct {
	name string
	// target marks the call the targets apply to.
	target bool
	do     func(ctx context.Context, c *testbed.CRIClient) error
}

func benchCalls(image string, containers, pods int) []benchCall {
	return []benchCall{
		{name: "Version", do: func(ctx context.Context, c *testbed.CRIClient) error {
			r, err := c.Runtime.Version(ctx, &runtimeapi.VersionRequest{})
			if err == nil && r.RuntimeName != "containerd" {
				err = fmt.Errorf("runtime name %q, want containerd", r.RuntimeName)
			}
			return err
		}},
		{name: fmt.Sprintf("ListContainers(%d)", containers), target: true, do: func(ctx context.Context, c *testbed.CRIClient) error {
			r, err := c.Runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
			if err == nil && len(r.Containers) != containers {
				err = fmt.Errorf("%d containers, want %d", len(r.Containers), containers)
			}
			return err
		}},
		{name: fmt.Sprintf("ListPodSandbox(%d)", pods), do: func(ctx context.Context, c *testbed.CRIClient) error {
			r, err := c.Runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
			if err == nil && len(r.Items) != pods {
				err = fmt.Errorf("%d sandboxes, want %d", len(r.Items), pods)
			}
			return err
		}},
		{name: "ImageStatus", do: func(ctx context.Context, c *testbed.CRIClient) error {
			r, err := c.Image.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: image}})
			if err == nil && r.GetImage() == nil {
				err = fmt.Errorf("image %s not found", image)
			}
			return err
		}},
	}
}

// loadAverage is the 1-minute load average, or "?" where /proc is unavailable.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

func procsLabel(n int) string {
	if n <= 0 {
		return "default"
	}
	return fmt.Sprint(n)
}
