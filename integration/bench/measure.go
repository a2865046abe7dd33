package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The project's targets for the CRI calls kubelet makes all the time, applied to ListContainers:
// with pullguard installed it goes to containerd's own socket, so they hold by construction; the
// run shows it rather than assuming it.
const (
	maxAddedP50 = 50 * time.Microsecond
	maxRatioP50 = 1.3
)

// callTimeout bounds one call so a wedged component fails the run instead of hanging it.
const callTimeout = 10 * time.Second

type latencies struct {
	p50, p99 time.Duration
}

// criEndpoints is a CRI client as kubelet holds one: the runtime service and the image service,
// each on the socket it was configured with.
type criEndpoints struct {
	runtime runtimeapi.RuntimeServiceClient
	image   runtimeapi.ImageServiceClient
}

// benchCall is one unary CRI call; do validates the response so that a path answering fast but
// wrongly cannot look good.
type benchCall struct {
	name string
	// runtime marks a runtime-service call: kubelet sends it to containerRuntimeEndpoint, which
	// stays on containerd's socket when pullguard is installed.
	runtime bool
	// target marks the call the targets apply to.
	target bool
	do     func(ctx context.Context, c criEndpoints) error
}

// path says where the call goes on a node with pullguard installed.
func (c benchCall) path() string {
	if c.runtime {
		return "containerd's socket"
	}
	return "pullguard"
}

type result struct {
	call            benchCall
	direct, withPG  latencies
	pairedAdded     time.Duration // median of each iteration's difference
	relay           *latencies    // nil when not measured
	pgCPU, relayCPU time.Duration // CPU time per call of those processes (0: not measured)
}

func (r result) added() time.Duration { return r.withPG.p50 - r.direct.p50 }

func (r result) ratio() float64 { return float64(r.withPG.p50) / float64(r.direct.p50) }

func (r result) meetsTargets() bool {
	return r.added() <= maxAddedP50 && r.ratio() <= maxRatioP50
}

// measure times c straight to containerd, as kubelet makes it with pullguard installed, and (if
// relayed is not nil) through the byte relay, in a new random order on every iteration (see
// iterationOrder) so that drift (other load, GC, caches) hits all sides alike.
func measure(ctx context.Context, c benchCall, direct, withPG criEndpoints, relayed *criEndpoints, warmup, n int) (result, error) {
	once := func(e criEndpoints) (time.Duration, error) {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		start := time.Now()
		err := c.do(cctx, e)
		return time.Since(start), err
	}
	targets := []criEndpoints{direct, withPG}
	names := []string{"direct", "with pullguard", "through the relay"}
	if relayed != nil {
		targets = append(targets, *relayed)
	}
	for range warmup {
		for i, e := range targets {
			if _, err := once(e); err != nil {
				return result{}, fmt.Errorf("%s: %w", names[i], err)
			}
		}
	}
	times := make([][]time.Duration, len(targets))
	for i := range times {
		times[i] = make([]time.Duration, n)
	}
	order := iterationOrder()
	for i := range n {
		for _, j := range order(len(targets)) {
			t, err := once(targets[j])
			if err != nil {
				return result{}, fmt.Errorf("%s: %w", names[j], err)
			}
			times[j][i] = t
		}
	}
	r := result{call: c, direct: summarize(times[0]), withPG: summarize(times[1]), pairedAdded: pairedAdded(times[0], times[1])}
	if relayed != nil {
		l := summarize(times[2])
		r.relay = &l
	}
	return r, nil
}

// iterationOrder returns a source of orders in which to visit n sides in one iteration: a random
// permutation each time, from a fixed seed so that runs are alike. A rotation would not do: each
// side would mostly follow the same other side, and a call pays for what the one before it left
// running (an extra process still finishing on one of few CPUs, containerd's clean-up after a
// create); with random orders every side follows every other equally often.
func iterationOrder() func(n int) []int {
	rng := rand.New(rand.NewPCG(1, 2))
	return rng.Perm
}

func summarize(ts []time.Duration) latencies {
	s := slices.Clone(ts)
	slices.Sort(s)
	return latencies{p50: percentile(s, 50), p99: percentile(s, 99)}
}

// percentile of sorted ts by the nearest-rank method.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (p*len(sorted) + 99) / 100 // ceil(p/100 * n)
	return sorted[max(rank, 1)-1]
}

// median is the 50th percentile; 0 for no samples.
func median(ds []time.Duration) time.Duration {
	return summarize(ds).p50
}

// pairedAdded is the median of the per-iteration differences other[i] - ref[i]: each
// iteration's calls ran back to back, so drift in containerd's own time cancels out better than
// in a difference of medians.
func pairedAdded(ref, other []time.Duration) time.Duration {
	d := make([]time.Duration, min(len(ref), len(other)))
	for i := range d {
		d[i] = other[i] - ref[i]
	}
	return median(d)
}

// printReport writes the table of the CRI calls and returns whether the targeted call missed
// its targets.
func printReport(w io.Writer, header string, results []result) (missed bool) {
	fmt.Fprintln(w, header)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "call\twith pullguard, goes to\tdirect p50\tdirect p99\twith pullguard p50\twith pullguard p99\tadded p50\tpaired added\tratio p50\ttarget\trelay p50\trelay added\tpullguard CPU/call\trelay CPU/call\t")
	for _, r := range results {
		verdict := "-"
		if r.call.target {
			verdict = "PASS"
			if !r.meetsTargets() {
				verdict = "MISS"
				missed = true
			}
		}
		relayP50, relayAdded := "-", "-"
		if r.relay != nil {
			relayP50, relayAdded = fmtDur(r.relay.p50), signed(r.relay.p50-r.direct.p50)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%s\t%s\t%s\t%s\t%s\t\n", r.call.name, r.call.path(),
			fmtDur(r.direct.p50), fmtDur(r.direct.p99), fmtDur(r.withPG.p50), fmtDur(r.withPG.p99), signed(r.added()), signed(r.pairedAdded),
			r.ratio(), verdict, relayP50, relayAdded, cpuUS(r.pgCPU), cpuUS(r.relayCPU))
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "targets (ListContainers): p50 added <= %s and p50 ratio <= %.1f\n", fmtDur(maxAddedP50), maxRatioP50)
	fmt.Fprintln(w, "with pullguard = kubelet's wiring: image calls to pullguard's socket, runtime calls to containerd's own socket (a connection of its own, the same path as direct)")
	fmt.Fprintln(w, "relay = a separate process copying bytes to containerd, no gRPC: what any extra hop costs on this machine now")
	fmt.Fprintln(w, "paired added = median of each iteration's difference; CPU/call = the process's CPU time (all threads) over the warm-up and timed calls, per call it carried")
	return missed
}

// summaryRow is one line of the table printed at the end of a run, in Markdown so that the
// project README can quote it as it is.
type summaryRow struct {
	what      string
	reference string        // what measured is compared with
	ref, meas time.Duration // p50s
	paired    time.Duration // median of per-iteration differences; 0: not paired
	floor     string        // the floor measured in the same run, "" for none
	target    string        // "" for none
}

// writeSummary writes rows as a Markdown table under a line naming the machine's state.
func writeSummary(w io.Writer, title, machine string, rows []summaryRow) {
	fmt.Fprintf(w, "\n%s (%s)\n\n", title, machine)
	fmt.Fprintln(w, "| what | compared with | reference p50 | measured p50 | added p50 | paired added | ratio | floor, same run | target |")
	fmt.Fprintln(w, "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
	for _, r := range rows {
		ref, added, ratio, paired := "—", "—", "—", "—"
		if r.ref > 0 {
			ref, added, ratio = fmtDur(r.ref), signed(r.meas-r.ref), fmt.Sprintf("%.2f", float64(r.meas)/float64(r.ref))
		}
		if r.paired != 0 {
			paired = signed(r.paired)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.what, orDash(r.reference), ref, fmtDur(r.meas),
			added, paired, ratio, orDash(r.floor), orDash(r.target))
	}
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// verdict renders a target, the figure it is judged on (basis) and whether added met it.
func verdict(added, limit time.Duration, basis string) string {
	v := "met"
	if added > limit {
		v = "**missed**"
	}
	return fmt.Sprintf("≤ %s (%s): %s", fmtDur(limit), basis, v)
}

// verdictCI judges a target on an estimate's 95% confidence interval [lo, hi]: met when all of it
// is within the limit, missed when all of it is above, and not resolved by the run otherwise.
func verdictCI(lo, hi, limit time.Duration, basis string) string {
	v := "not resolved by this run"
	switch {
	case hi <= limit:
		v = "met"
	case lo > limit:
		v = "**missed**"
	}
	return fmt.Sprintf("≤ %s (%s; 95%% CI %s to %s): %s", fmtDur(limit), basis, signed(lo), signed(hi), v)
}

// machineState names what the figures depend on: the CPUs and the 1-minute load average before
// and after.
func machineState(loadBefore string) string {
	return fmt.Sprintf("%d CPUs, load average %s before, %s after", numCPU(), loadBefore, loadAverage())
}

// fmtDur prints µs below a millisecond and ms with two decimals above.
func fmtDur(d time.Duration) string {
	if d >= time.Millisecond || d <= -time.Millisecond {
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

func signed(d time.Duration) string {
	s := fmtDur(d)
	if d >= 0 {
		return "+" + s
	}
	return s
}

func cpuUS(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f µs", float64(d)/float64(time.Microsecond))
}

func numCPU() int { return runtime.GOMAXPROCS(0) }

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

// summaryRows collects rows by key over a run; a benchmark that runs again (Go runs some twice)
// replaces its row, and rows keep the order they first came in.
type summaryRows struct {
	mu   sync.Mutex
	keys []string
	rows map[string]summaryRow
}

func (s *summaryRows) set(key string, r summaryRow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rows == nil {
		s.rows = map[string]summaryRow{}
	}
	if _, ok := s.rows[key]; !ok {
		s.keys = append(s.keys, key)
	}
	s.rows[key] = r
}

func (s *summaryRows) all() []summaryRow {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]summaryRow, 0, len(s.keys))
	for _, k := range s.keys {
		out = append(out, s.rows[k])
	}
	return out
}
