package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pullguard/pullguard/config"
	"github.com/pullguard/pullguard/plugin/proxy"
)

const defaultConfigPath = "/etc/pullguard/config.toml"

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", defaultConfigPath, "node config file (TOML)")
	reloadEvery := fs.Duration("reload-interval", 2*time.Second, "how often to look for config and policy changes (0 = only on SIGHUP)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "pullguard serve: unexpected arguments %q\n", fs.Args())
		return 2
	}

	// SIGHUP is caught from the start: its default action would kill the
	// process a node depends on.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	cfg, err := config.Load(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "pullguard serve: %v\n", err)
		return 2
	}
	log := newLogger(cfg, stderr)
	for _, w := range cfg.Warnings() {
		log.Warn("config warning", "config", *configPath, "warning", w)
	}
	m := newMetrics()
	sh := shared{log: log, obs: m, facts: newFactsCache(cfg)}
	m.watchCache(sh.facts.Stats)
	if f := cfg.CacheFile(); f != "" {
		// Facts from before a restart let an offline node start images it
		// already verified; a corrupt file costs re-verification, not startup.
		if n, err := sh.facts.Load(f); err != nil {
			log.Warn("facts cache not loaded; images will be verified again", "file", f, "error", err)
		} else {
			log.Info("facts cache loaded", "file", f, "entries", n)
		}
	}
	comp, err := assemble(ctx, cfg, sh)
	if err != nil {
		log.Error("cannot start", "config", *configPath, "error", err)
		return 2
	}

	srv, err := proxy.New(proxy.Options{
		Upstream:          cfg.Server.UpstreamPath(),
		UpstreamNamespace: cfg.Server.UpstreamNamespace,
		OnUpstreamError:   m.upstreamError,
		MaxMessageBytes:   cfg.Server.MaxMessageBytes,
		Logger:            log,
	})
	if err != nil {
		log.Error("cannot start proxy", "error", err)
		return 2
	}
	// The gate is set before Serve: no call is ever forwarded unchecked.
	srv.SetGate(proxy.NewEnforcer(comp.engine, srv.ImageService()))
	l, err := proxy.Listen(cfg.Server.Socket, cfg.Server.SocketFileMode(), cfg.Server.SocketGroup)
	if err != nil {
		log.Error("cannot listen", "socket", cfg.Server.Socket, "error", err)
		return 2
	}

	var httpSrv *http.Server
	if cfg.Metrics.Address != "" {
		httpSrv, err = startOpsServer(cfg.Metrics.Address, srv, m, log)
		if err != nil {
			l.Close()
			log.Error("cannot serve health endpoints", "address", cfg.Metrics.Address, "error", err)
			return 2
		}
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()
	log.Info("pullguard serving", "socket", cfg.Server.Socket, "upstream", cfg.Server.UpstreamPath(),
		"policy_hash", comp.engine.Policies().Hash(), "version", version)

	r := &reloader{
		path:  *configPath,
		build: func(c *config.Config) (*components, error) { return assemble(ctx, c, sh) },
		swap:  func(c *components) { srv.SetGate(proxy.NewEnforcer(c.engine, srv.ImageService())) },
		log:   log, metrics: m, running: cfg,
	}
	r.fingerprint, _ = fingerprint(cfg, *configPath)
	var tick <-chan time.Time
	if *reloadEvery > 0 {
		t := time.NewTicker(*reloadEvery)
		defer t.Stop()
		tick = t.C
	}

	code := 0
loop:
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down", "reason", "signal")
			break loop
		case err := <-serveErr:
			log.Error("proxy stopped", "error", err)
			code = 1
			break loop
		case <-hup:
			r.reload(ctx, true)
		case <-tick:
			r.reload(ctx, false)
		}
	}

	// Drain in-flight calls (a pull can take a while), bounded.
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout.Duration)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown did not drain in time", "error", err)
	}
	if httpSrv != nil {
		_ = httpSrv.Shutdown(sctx)
	}
	if f := r.running.CacheFile(); f != "" {
		if err := sh.facts.Save(f); err != nil {
			log.Warn("facts cache not saved", "file", f, "error", err)
		}
	}
	if err := os.Remove(cfg.Server.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("remove socket", "socket", cfg.Server.Socket, "error", err)
	}
	log.Info("pullguard stopped")
	return code
}

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.Log.Level)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// readiness is what /readyz asks of the proxy.
type readiness interface {
	UpstreamReady(ctx context.Context) error
}

func startOpsServer(addr string, ready readiness, m *metrics, log *slog.Logger) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := ready.UpstreamReady(ctx); err != nil {
			http.Error(w, "upstream not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := s.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health endpoint stopped", "error", err)
		}
	}()
	return s, nil
}
