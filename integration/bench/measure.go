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
}

func (r result) added() time.Duration { return r.proxy.p50 - r.direct.p50 }

func (r result) ratio() float64 { return float64(r.proxy.p50) / float64(r.direct.p50) }

func (r result) meetsTargets() bool {
	return r.added() <= maxAddedP50 && r.ratio() <= maxRatioP50
}

// measure times c straight to containerd and through the proxy, alternating which goes first
// on every iteration so that drift (other load, GC, caches) hits both sides alike.
func measure(ctx context.Context, c benchCall, direct, via *testbed.CRIClient, warmup, n int) (result, error) {
	once := func(cl *testbed.CRIClient) (time.Duration, error) {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		start := time.Now()
		err := c.do(cctx, cl)
		return time.Since(start), err
	}
	for range warmup {
		for _, cl := range []*testbed.CRIClient{direct, via} {
			if _, err := once(cl); err != nil {
				return result{}, err
			}
		}
	}
	d := make([]time.Duration, 0, n)
	p := make([]time.Duration, 0, n)
	for i := range n {
		order := []*testbed.CRIClient{direct, via}
		if i%2 == 1 {
			order[0], order[1] = via, direct
		}
		for _, cl := range order {
			t, err := once(cl)
			if err != nil {
				side := "direct"
				if cl == via {
					side = "through pullguard"
				}
				return result{}, fmt.Errorf("%s: %w", side, err)
			}
			if cl == direct {
				d = append(d, t)
			} else {
				p = append(p, t)
			}
		}
	}
	return result{call: c, direct: summarize(d), proxy: summarize(p)}, nil
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
	fmt.Fprintln(tw, "call\tdirect p50\tdirect p99\tproxy p50\tproxy p99\tadded p50\tratio p50\ttarget\t")
	for _, r := range results {
		verdict := "-"
		if r.call.target {
			verdict = "PASS"
			if !r.meetsTargets() {
				verdict = "MISS"
				missed = true
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%s\t\n", r.call.name,
			us(r.direct.p50), us(r.direct.p99), us(r.proxy.p50), us(r.proxy.p99), signedUS(r.added()), r.ratio(), verdict)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "targets (ListContainers): p50 added <= %s and p50 ratio <= %.1f\n", us(maxAddedP50), maxRatioP50)
	return missed
}

func us(d time.Duration) string { return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond)) }

func signedUS(d time.Duration) string {
	return fmt.Sprintf("%+.0fµs", float64(d)/float64(time.Microsecond))
}

func numCPU() int { return runtime.GOMAXPROCS(0) }
