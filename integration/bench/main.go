// Command bench measures what pullguard adds to the unary CRI calls kubelet makes all the time.
// It starts a real registry + containerd (integration/testbed), fills containerd with
// host-network pod sandboxes, containers and images, starts `pullguard serve` and a byte relay,
// then times the same calls straight to containerd, as kubelet makes them with pullguard
// installed (image calls to pullguard's socket, runtime calls to containerd's own) and through
// the relay, interleaved in one run, and prints p50/p99, the added latency and the ratio.
//
//	go run ./integration/bench [-n 2000] [-pods 50] [-images 50] [-strict]
//
// Creates (decided inside containerd by pullguard's NRI plugin) and verified pulls are measured
// by the benchmarks of this package: go test -run '^$' -bench . ./integration/bench/
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullguard/pullguard/integration/testbed"
)

type options struct {
	iterations int
	warmup     int
	pods       int
	images     int
	strict     bool
	verbose    bool
	relay      bool
	pgProcs    int
}

func main() {
	// The relay process is this program started again.
	if ok, err := helperProcess(os.Args[1:]); ok {
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench helper:", err)
			os.Exit(2)
		}
		return
	}
	var o options
	flag.IntVar(&o.iterations, "n", 2000, "timed iterations per call and target")
	flag.IntVar(&o.warmup, "warmup", 200, "untimed iterations per call and target first")
	flag.IntVar(&o.pods, "pods", 50, "host-network pod sandboxes (one container each) to create")
	flag.IntVar(&o.images, "images", 50, "images to pull into containerd besides the pause image")
	flag.BoolVar(&o.strict, "strict", false, "exit 1 when a target is missed")
	flag.BoolVar(&o.verbose, "v", false, "log test-bed progress")
	flag.BoolVar(&o.relay, "relay", true, "also time a byte-copying relay process: the floor of any extra hop on this machine")
	flag.IntVar(&o.pgProcs, "pullguard-gomaxprocs", 0, "GOMAXPROCS for the pullguard process (0: Go's default)")
	flag.Parse()

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
	if o.iterations < 10 || o.pods < 1 || o.images < 0 || o.warmup < 0 {
		return false, errors.New("need -n >= 10, -pods >= 1, -images >= 0, -warmup >= 0")
	}
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	// No NRI: these calls never reach it, and the pods are made straight on containerd.
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
	direct, err := testbed.DialCRI(bed.Containerd.Socket)
	if err != nil {
		return false, err
	}
	defer direct.Close()
	fmt.Fprintf(os.Stderr, "pulling %d images into containerd...\n", o.images)
	if err := pullImages(ctx, bed, direct, o.images); err != nil {
		return false, err
	}
	imgs, err := direct.Image.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		return false, err
	}
	version, err := direct.Runtime.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return false, err
	}

	var env []string
	if o.pgProcs > 0 {
		env = append(env, fmt.Sprintf("GOMAXPROCS=%d", o.pgProcs))
	}
	// No policies: the measured calls are relayed, never decided. Without NRI pullguard runs
	// pull-only; its image service is the same either way.
	pg, err := bed.StartPullguard(ctx, testbed.PullguardOptions{Env: env})
	if err != nil {
		return false, fmt.Errorf("start pullguard: %w", err)
	}
	defer func() { _ = pg.Stop() }()
	probe, err := testbed.DialCRI(pg.Socket)
	if err != nil {
		return false, err
	}
	_, err = probe.Runtime.Version(ctx, &runtimeapi.VersionRequest{})
	probe.Close()
	if status.Code(err) != codes.Unimplemented {
		return false, fmt.Errorf("pullguard's socket should refuse runtime calls (Unimplemented), got %v", err)
	}

	relaySock, relayPid := "", 0
	if o.relay {
		sock, pid, stopRelay, err := startRelay(ctx, bed.Dir, bed.Containerd.Socket)
		if err != nil {
			return false, err
		}
		defer stopRelay()
		relaySock, relayPid = sock, pid
	}

	// The figures only mean something next to the machine's load: a busy machine delays an extra
	// process's wake-ups most.
	loadBefore := loadAverage()
	calls := benchCalls(bed.Pause.Ref, len(imgs.Images), len(bulk.ContainerIDs))
	results := make([]result, 0, len(calls))
	for _, c := range calls {
		fmt.Fprintf(os.Stderr, "measuring %s...\n", c.name)
		sides, err := dialSides(bed.Containerd.Socket, pg.Socket, relaySock)
		if err != nil {
			return false, err
		}
		pgCPU, relayCPU := startCPU(pg.Process().Pid()), startCPU(relayPid)
		r, err := measure(ctx, c, sides.direct, sides.withPG, sides.relayed, o.warmup, o.iterations)
		sides.close()
		if err != nil {
			return false, fmt.Errorf("measure %s: %w", c.name, err)
		}
		r.pgCPU = pgCPU.perCall(o.warmup + o.iterations)
		r.relayCPU = relayCPU.perCall(o.warmup + o.iterations)
		results = append(results, r)
	}
	runtimeName := version.RuntimeName + " " + version.RuntimeVersion
	header := fmt.Sprintf("pullguard on kubelet's CRI calls: %s, %d pod sandboxes, %d containers, %d images, "+
		"%d interleaved iterations per call and target after %d warm-up, pullguard GOMAXPROCS %s, %d CPUs, load average before/after %s / %s",
		runtimeName, len(bulk.PodIDs), len(bulk.ContainerIDs), len(imgs.Images), o.iterations, o.warmup, procsLabel(o.pgProcs), numCPU(), loadBefore, loadAverage())
	missed = printReport(os.Stdout, header, results)
	writeSummary(os.Stdout, "Summary: CRI calls, "+runtimeName, machineState(loadBefore), callSummary(results))
	return missed, nil
}

// sides are the clients of one call's measurement, each on connections of its own that carry
// only that call, so that no side's connection has a history the others lack.
type sides struct {
	direct, withPG criEndpoints
	relayed        *criEndpoints // nil without a relay
	conns          []*testbed.CRIClient
}

// dialSides dials direct (containerd's socket), with pullguard as kubelet is wired (the runtime
// service on containerd's socket, the image service on pullguard's) and, when relaySock is set,
// through the relay.
func dialSides(ctdSock, pgSock, relaySock string) (*sides, error) {
	s := &sides{}
	dial := func(sock string) (*testbed.CRIClient, error) {
		c, err := testbed.DialCRI(sock)
		if err == nil {
			s.conns = append(s.conns, c)
		}
		return c, err
	}
	direct, err := dial(ctdSock)
	if err != nil {
		return nil, err
	}
	runtimeEP, err := dial(ctdSock)
	if err != nil {
		s.close()
		return nil, err
	}
	imageEP, err := dial(pgSock)
	if err != nil {
		s.close()
		return nil, err
	}
	s.direct = criEndpoints{direct.Runtime, direct.Image}
	s.withPG = criEndpoints{runtimeEP.Runtime, imageEP.Image}
	if relaySock != "" {
		relay, err := dial(relaySock)
		if err != nil {
			s.close()
			return nil, err
		}
		s.relayed = &criEndpoints{relay.Runtime, relay.Image}
	}
	return s, nil
}

func (s *sides) close() {
	for _, c := range s.conns {
		c.Close()
	}
}

// pullImages pushes n small distinct images and pulls them straight into containerd, so that
// ListImages returns what a node's image list looks like.
func pullImages(ctx context.Context, bed *testbed.Bed, direct *testbed.CRIClient, n int) error {
	for i := range n {
		img, err := testbed.TinyImage(fmt.Sprintf("bench image %d", i))
		if err != nil {
			return err
		}
		pushed, err := bed.Registry.Push(ctx, fmt.Sprintf("bench/img-%d:v1", i), img)
		if err != nil {
			return err
		}
		if _, err := direct.Image.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: pushed.Ref}}); err != nil {
			return fmt.Errorf("pull %s: %w", pushed.Ref, err)
		}
	}
	return nil
}

func benchCalls(image string, images, containers int) []benchCall {
	return []benchCall{
		{name: "ImageStatus", do: func(ctx context.Context, c criEndpoints) error {
			r, err := c.image.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: image}})
			if err == nil && r.GetImage() == nil {
				err = fmt.Errorf("image %s not found", image)
			}
			return err
		}},
		{name: fmt.Sprintf("ListImages(%d)", images), do: func(ctx context.Context, c criEndpoints) error {
			r, err := c.image.ListImages(ctx, &runtimeapi.ListImagesRequest{})
			if err == nil && len(r.Images) != images {
				err = fmt.Errorf("%d images, want %d", len(r.Images), images)
			}
			return err
		}},
		{name: "ImageFsInfo", do: func(ctx context.Context, c criEndpoints) error {
			r, err := c.image.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
			if err == nil && len(r.ImageFilesystems) == 0 {
				err = errors.New("no image filesystem")
			}
			return err
		}},
		{name: fmt.Sprintf("ListContainers(%d)", containers), runtime: true, target: true, do: func(ctx context.Context, c criEndpoints) error {
			r, err := c.runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
			if err == nil && len(r.Containers) != containers {
				err = fmt.Errorf("%d containers, want %d", len(r.Containers), containers)
			}
			return err
		}},
	}
}

// callSummary turns the calls' results into summary rows.
func callSummary(results []result) []summaryRow {
	rows := make([]summaryRow, 0, len(results))
	for _, r := range results {
		row := summaryRow{what: r.call.name + " through pullguard", reference: "direct", ref: r.direct.p50, meas: r.withPG.p50, paired: r.pairedAdded}
		if r.call.runtime {
			row.what = r.call.name + " on kubelet's runtime endpoint (containerd's socket: pullguard is not on the path)"
		}
		if r.relay != nil {
			row.floor = "byte relay " + signed(r.relay.p50-r.direct.p50)
		}
		if r.call.target {
			v := "met"
			if !r.meetsTargets() {
				v = "**missed**"
			}
			row.target = fmt.Sprintf("≤ %s, ≤ %.1f (medians): %s", fmtDur(maxAddedP50), maxRatioP50, v)
		}
		rows = append(rows, row)
	}
	return rows
}

func procsLabel(n int) string {
	if n <= 0 {
		return "default"
	}
	return fmt.Sprint(n)
}
