package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/pullguard/pullguard/integration/testbed"
)

// Targets from issue 2 item 9, applied to the ListContainers call.
const (
	maxAddedP50 = 50 * time.Microsecond
	maxRatioP50 = 1.3
)

// callTimeout bounds one call so a wedged component fails the run instead of hanging it.
const callTimeout = 10 * time.Second

type latencies struct {
	p50, p99 time.Duration
}

type result struct {
	call          benchCall
	direct, proxy latencies
	relay         *latencies // nil when not measured
	// CPU time per call of the pullguard and relay processes (0: not measured).
	proxyCPU, relayCPU time.Duration
}

func (r result) added() time.Duration { return r.proxy.p50 - r.direct.p50 }

func (r result) ratio() float64 { return float64(r.proxy.p50) / float64(r.direct.p50) }

func (r result) meetsTargets() bool {
	return r.added() <= maxAddedP50 && r.ratio() <= maxRatioP50
}

// measure times c straight to containerd, through the proxy and (if relayed is not nil) through
// the byte relay, rotating which goes first on every iteration so that drift (other load, GC,
// caches) hits all sides alike.
func measure(ctx context.Context, c benchCall, direct, via, relayed *testbed.CRIClient, warmup, n int) (result, error) {
	once := func(cl *testbed.CRIClient) (time.Duration, error) {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		start := time.Now()
		err := c.do(cctx, cl)
		return time.Since(start), err
	}
	targets := []*testbed.CRIClient{direct, via}
	names := []string{"direct", "through pullguard", "through the relay"}
	if relayed != nil {
		targets = append(targets, relayed)
	}
	for range warmup {
		for i, cl := range targets {
			if _, err := once(cl); err != nil {
				return result{}, fmt.Errorf("%s: %w", names[i], err)
			}
		}
	}
	times := make([][]time.Duration, len(targets))
	for i := range times {
		times[i] = make([]time.Duration, 0, n)
	}
	for i := range n {
		for k := range targets {
			j := (i + k) % len(targets)
			t, err := once(targets[j])
			if err != nil {
				return result{}, fmt.Errorf("%s: %w", names[j], err)
			}
			times[j] = append(times[j], t)
		}
	}
	r := result{call: c, direct: summarize(times[0]), proxy: summarize(times[1])}
	if relayed != nil {
		l := summarize(times[2])
		r.relay = &l
	}
	return r, nil
}

func summarize(ts []time.Duration) latencies {
	slices.Sort(ts)
	return latencies{p50: percentile(ts, 50), p99: percentile(ts, 99)}
}

// percentile of sorted ts by the nearest-rank method.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (p*len(sorted) + 99) / 100 // ceil(p/100 * n)
	return sorted[max(rank, 1)-1]
}

// printReport writes the table and returns whether the targeted call missed its targets.
func printReport(w io.Writer, header string, results []result) (missed bool) {
	fmt.Fprintln(w, header)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "call\tdirect p50\tdirect p99\tproxy p50\tproxy p99\tadded p50\tratio p50\ttarget\trelay p50\trelay added\tpullguard CPU/call\trelay CPU/call\t")
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
			relayP50, relayAdded = us(r.relay.p50), signedUS(r.relay.p50-r.direct.p50)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%s\t%s\t%s\t%s\t%s\t\n", r.call.name,
			us(r.direct.p50), us(r.direct.p99), us(r.proxy.p50), us(r.proxy.p99), signedUS(r.added()), r.ratio(), verdict,
			relayP50, relayAdded, cpuUS(r.proxyCPU), cpuUS(r.relayCPU))
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "targets (ListContainers): p50 added <= %s and p50 ratio <= %.1f\n", us(maxAddedP50), maxRatioP50)
	fmt.Fprintln(w, "relay = a separate process copying bytes to containerd, no gRPC: what any extra hop costs on this machine now")
	fmt.Fprintln(w, "CPU/call = the process's CPU time (all threads) over the warm-up and timed calls, per call it carried")
	return missed
}

func cpuUS(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fµs", float64(d)/float64(time.Microsecond))
}

func us(d time.Duration) string { return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond)) }

func signedUS(d time.Duration) string {
	return fmt.Sprintf("%+.0fµs", float64(d)/float64(time.Microsecond))
}

func numCPU() int { return runtime.GOMAXPROCS(0) }
