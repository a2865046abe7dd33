package main

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc/codes"

	"github.com/pullguard/pullguard/plugin/cache"
	"github.com/pullguard/pullguard/plugin/enforce"
)

// metrics are pullguard's Prometheus series, registered on their own
// registry so nothing global leaks between tests or reloads.
type metrics struct {
	registry  *prometheus.Registry
	decisions *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	reloads   *prometheus.CounterVec
	upstream  *prometheus.CounterVec
	running   *prometheus.GaugeVec
	unscanned *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullguard_decisions_total",
			Help: "Image decisions by operation, verdict, category and namespace.",
		}, []string{"op", "verdict", "category", "namespace"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pullguard_decision_duration_seconds",
			Help:    "Time to decide on an image, registry calls included.",
			Buckets: []float64{.0001, .0005, .001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"op"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullguard_config_reloads_total",
			Help: "Config reload attempts by result (ok, rejected).",
		}, []string{"result"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullguard_upstream_errors_total",
			Help: "Forwarded CRI calls that failed upstream, by method and gRPC code (Unavailable: containerd unreachable).",
		}, []string{"method", "code"}),
		unscanned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullguard_unscanned_admissions_total",
			Help: "Images admitted without a scan report because their rule says unscanned = allow, by operation and namespace.",
		}, []string{"op", "namespace"}),
		running: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pullguard_running_containers",
			Help: "Running containers by namespace and verdict (admit, deny, pending: not decided yet).",
		}, []string{"namespace", "verdict"}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pullguard_build_info",
		Help: "Always 1: the running pullguard's version, source revision and Go version.",
	}, []string{"version", "revision", "goversion"})
	build.WithLabelValues(buildInfo()).Set(1)
	m.registry.MustRegister(m.decisions, m.latency, m.reloads, m.upstream, m.running, m.unscanned, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObserveDecision implements enforce.Observer.
func (m *metrics) ObserveDecision(d *enforce.Decision) {
	verdict := string(d.Verdict)
	if d.Audited {
		verdict = "audit"
	}
	m.decisions.WithLabelValues(string(d.Op), verdict, string(d.Category), d.Namespace).Inc()
	if d.Unscanned && !d.Denied() {
		m.unscanned.WithLabelValues(string(d.Op), d.Namespace).Inc()
	}
	m.latency.WithLabelValues(string(d.Op)).Observe(d.Latency.Seconds())
}

// watchCache exposes the facts cache's counters; the hit ratio is
// hits / (hits + misses).
func (m *metrics) watchCache(stats func() cache.Stats) {
	counter := func(name, help string, v func(cache.Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v(stats())) })
	}
	m.registry.MustRegister(
		counter("pullguard_facts_cache_hits_total", "Facts found in the cache.", func(s cache.Stats) uint64 { return s.Hits }),
		counter("pullguard_facts_cache_misses_total", "Facts not in the cache (verified, or joined a verification in flight).", func(s cache.Stats) uint64 { return s.Misses }),
		counter("pullguard_facts_cache_coalesced_total", "Verifications joined while already in flight.", func(s cache.Stats) uint64 { return s.Coalesced }),
		counter("pullguard_facts_cache_evictions_total", "Facts evicted to respect the cache size.", func(s cache.Stats) uint64 { return s.Evictions }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pullguard_facts_cache_entries", Help: "Facts held in the cache."},
			func() float64 { return float64(stats().Entries) }),
	)
}

// runningContainers replaces the running-container counts.
func (m *metrics) runningContainers(counts map[[2]string]int) {
	m.running.Reset()
	for k, n := range counts {
		m.running.WithLabelValues(k[0], k[1]).Set(float64(n))
	}
}

// watchNRI exposes whether containerd has the NRI plugin registered.
func (m *metrics) watchNRI(registered func() bool) {
	m.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pullguard_nri_registered",
		Help: "1 while containerd has pullguard's NRI plugin registered; while 0 containerd refuses every container create.",
	}, func() float64 {
		if registered() {
			return 1
		}
		return 0
	}))
}

// upstreamError counts a failed upstream call.
func (m *metrics) upstreamError(method string, code codes.Code) {
	m.upstream.WithLabelValues(method, code.String()).Inc()
}

func (m *metrics) reloaded(ok bool) {
	if ok {
		m.reloads.WithLabelValues("ok").Inc()
	} else {
		m.reloads.WithLabelValues("rejected").Inc()
	}
}

// buildInfo is the version, source revision and Go version of this binary.
func buildInfo() (ver, revision, goVersion string) {
	revision, goVersion = "unknown", runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				revision = s.Value
			}
		}
	}
	return version, revision, goVersion
}
