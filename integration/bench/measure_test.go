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

func TestReportVerdicts(t *testing.T) {
	lat := func(p50us int) latencies {
		return latencies{p50: time.Duration(p50us) * time.Microsecond, p99: time.Duration(2*p50us) * time.Microsecond}
	}
	tests := []struct {
		name          string
		direct, proxy int // p50 in µs
		wantMiss      bool
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
				{call: benchCall{name: "Version"}, direct: lat(10), proxy: lat(100)}, // untargeted: never a MISS
				{call: benchCall{name: "ListContainers(50)", target: true}, direct: lat(tc.direct), proxy: lat(tc.proxy)},
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
		})
	}
}
