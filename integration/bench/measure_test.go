package main

import (
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	tests := []struct {
		sorted []time.Duration
		p      int
		want   time.Duration
	}{
		{nil, 50, 0},
		{ms(7), 50, 7 * time.Millisecond},
		{ms(7), 99, 7 * time.Millisecond},
		{ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{ms(1, 2, 3, 4, 5), 50, 3 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 90, 9 * time.Millisecond},
	}
	for _, tc := range tests {
		if got := percentile(tc.sorted, tc.p); got != tc.want {
			t.Errorf("percentile(%v, %d) = %v, want %v", tc.sorted, tc.p, got, tc.want)
		}
	}
}

func TestMedianLeavesInputAlone(t *testing.T) {
	in := []time.Duration{3, 1, 2}
	if got := median(in); got != 2 {
		t.Errorf("median = %v, want 2", got)
	}
	if in[0] != 3 || in[1] != 1 || in[2] != 2 {
		t.Errorf("median reordered its input: %v", in)
	}
}

func TestPairedAdded(t *testing.T) {
	// The reference drifts by 10 per iteration; the other side always costs 2 more. The
	// difference of medians sees drift, the paired median only the 2.
	ref := []time.Duration{10, 20, 30, 100, 110}
	other := []time.Duration{12, 22, 32, 102, 112}
	if got := pairedAdded(ref, other); got != 2 {
		t.Errorf("pairedAdded = %v, want 2", got)
	}
	// Unequal lengths pair what there is.
	if got := pairedAdded(ref[:2], other); got != 2 {
		t.Errorf("pairedAdded over unequal lengths = %v, want 2", got)
	}
}

func TestReportVerdicts(t *testing.T) {
	lat := func(p50us int) latencies {
		return latencies{p50: time.Duration(p50us) * time.Microsecond, p99: time.Duration(2*p50us) * time.Microsecond}
	}
	tests := []struct {
		name           string
		direct, withPG int // p50 in µs
		wantMiss       bool
	}{
		{"within both", 400, 440, false},
		{"added too much", 400, 460, true},
		{"ratio too high", 100, 140, true},
		{"exactly at limits", 200, 250, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var sb strings.Builder
			r := []result{
				{call: benchCall{name: "ImageStatus"}, direct: lat(10), withPG: lat(100)}, // untargeted: never a MISS
				{call: benchCall{name: "ListContainers(50)", runtime: true, target: true}, direct: lat(tc.direct), withPG: lat(tc.withPG)},
			}
			missed := printReport(&sb, "header", r)
			if missed != tc.wantMiss {
				t.Errorf("missed = %v, want %v\n%s", missed, tc.wantMiss, sb.String())
			}
			want := "PASS"
			if tc.wantMiss {
				want = "MISS"
			}
			if !strings.Contains(sb.String(), want) || strings.Count(sb.String(), "MISS")+strings.Count(sb.String(), "PASS") != 1 {
				t.Errorf("report should carry exactly one verdict, %s:\n%s", want, sb.String())
			}
			rows := callSummary(r)
			if len(rows) != 2 || rows[0].target != "" || !strings.Contains(rows[1].target, map[bool]string{true: "missed", false: "met"}[tc.wantMiss]) {
				t.Errorf("summary rows %+v: want the verdict on the targeted call only", rows)
			}
			if !strings.Contains(rows[1].what, "containerd's socket") {
				t.Errorf("a runtime call's summary row should say it goes to containerd's socket: %q", rows[1].what)
			}
		})
	}
}

func TestWriteSummary(t *testing.T) {
	var sb strings.Builder
	writeSummary(&sb, "Summary", "2 CPUs, load average 1.00 before, 1.50 after", []summaryRow{
		{what: "create", reference: "trivial", ref: 15 * time.Millisecond, meas: 15200 * time.Microsecond, paired: 150 * time.Microsecond, target: verdict(200*time.Microsecond, 300*time.Microsecond, "paired")},
		{what: "fetch", meas: 900 * time.Microsecond},
	})
	out := sb.String()
	for _, want := range []string{
		"Summary (2 CPUs, load average 1.00 before, 1.50 after)",
		"| create | trivial | 15.00 ms | 15.20 ms | +200 µs | +150 µs | 1.01 | — | ≤ 300 µs (paired): met |",
		"| fetch | — | — | 900 µs | — | — | — | — | — |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if got := verdict(301*time.Microsecond, 300*time.Microsecond, "medians"); !strings.Contains(got, "missed") {
		t.Errorf("verdict over the limit = %q, want missed", got)
	}
}

func TestSummaryRowsKeepFirstOrderAndLastValue(t *testing.T) {
	var s summaryRows
	s.set("a", summaryRow{what: "a1"})
	s.set("b", summaryRow{what: "b"})
	s.set("a", summaryRow{what: "a2"}) // a benchmark run again replaces its row
	got := s.all()
	if len(got) != 2 || got[0].what != "a2" || got[1].what != "b" {
		t.Errorf("rows = %+v, want a2 then b", got)
	}
}

func TestHelperProcessArgs(t *testing.T) {
	for _, args := range [][]string{nil, {"-test.v"}, {"-relay-serve", "x"}, {"-nri-stub"}, {"-nri-stub", "a", "b"}} {
		if ok, _ := helperProcess(args); ok {
			t.Errorf("helperProcess(%q) took the arguments for a helper's", args)
		}
	}
}

func TestPullguardAddedCancelsTheContainerdDifference(t *testing.T) {
	// gate1 is 4 slower than gate2 on every create; pullguard's validator costs 1 more than the
	// trivial one. With pullguard on gate1 the difference reads 5, on gate2 -3.
	var its []warmIteration
	for i := range 6 {
		active := i % 2
		gate := [2]time.Duration{104, 100}
		it := warmIteration{active: active}
		it.took[onPullguard] = gate[active] + 1
		it.took[onTrivial] = gate[1-active]
		its = append(its, it)
	}
	added, instance, both := pullguardAdded(its)
	if added != 1 || instance != 4 || !both {
		t.Errorf("pullguardAdded = %v, %v, %v; want 1, 4, true", added, instance, both)
	}
	added, _, both = pullguardAdded(its[:1])
	if added != 5 || both {
		t.Errorf("pullguardAdded on one containerd = %v, %v; want the plain paired 5, false", added, both)
	}
}

func TestIterationOrderVisitsEverySideAndBalancesWhoFollowsWhom(t *testing.T) {
	order := iterationOrder()
	const n, iterations = 3, 3000
	var follows [n][n]int // follows[a][b]: b came right after a within an iteration
	first := [n]int{}
	for range iterations {
		o := order(n)
		seen := [n]bool{}
		for k, j := range o {
			if seen[j] {
				t.Fatalf("order %v visits side %d twice", o, j)
			}
			seen[j] = true
			if k > 0 {
				follows[o[k-1]][j]++
			}
		}
		first[o[0]]++
	}
	// 2 adjacent pairs per iteration over 6 ordered pairs: 1000 each when balanced.
	for a := range n {
		for b := range n {
			if a != b && (follows[a][b] < 850 || follows[a][b] > 1150) {
				t.Errorf("side %d followed side %d %d times in %d iterations, want about 1000: %v", b, a, follows[a][b], iterations, follows)
			}
		}
		if first[a] < 850 || first[a] > 1150 {
			t.Errorf("side %d went first %d times, want about 1000", a, first[a])
		}
	}
}

func TestVerdictCI(t *testing.T) {
	const limit = 300 * time.Microsecond
	for _, tc := range []struct {
		lo, hi time.Duration
		want   string
	}{
		{-100 * time.Microsecond, 250 * time.Microsecond, ": met"},
		{-100 * time.Microsecond, 300 * time.Microsecond, ": met"},
		{100 * time.Microsecond, 900 * time.Microsecond, "not resolved"},
		{301 * time.Microsecond, 900 * time.Microsecond, "**missed**"},
	} {
		got := verdictCI(tc.lo, tc.hi, limit, "paired")
		if !strings.Contains(got, tc.want) {
			t.Errorf("verdictCI(%v, %v) = %q, want %q", tc.lo, tc.hi, got, tc.want)
		}
	}
}

func TestPullguardAddedCI(t *testing.T) {
	// Every iteration says 1 over the trivial validator on either containerd: no spread, so the
	// interval is that one value.
	var its []warmIteration
	for i := range 40 {
		it := warmIteration{active: i % 2}
		it.took[onPullguard], it.took[onTrivial] = 101, 100
		its = append(its, it)
	}
	if lo, hi := pullguardAddedCI(its); lo != 1 || hi != 1 {
		t.Errorf("interval without spread = [%v, %v], want [1, 1]", lo, hi)
	}
	// Spread both ways around 1: the interval holds the estimate and is wider than a point.
	for i := range its {
		its[i].took[onPullguard] += time.Duration(i%5-2) * 10
	}
	est, _, _ := pullguardAdded(its)
	lo, hi := pullguardAddedCI(its)
	if lo > est || hi < est || lo == hi {
		t.Errorf("interval [%v, %v] around the estimate %v: want it to hold the estimate and have a width", lo, hi, est)
	}
	if lo, hi := pullguardAddedCI(nil); lo != 0 || hi != 0 {
		t.Errorf("interval of no iterations = [%v, %v], want zero", lo, hi)
	}
}
