package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/pullguard/pullguard/cmd/internal/cli"
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
	"github.com/pullguard/pullguard/plugin/enforce"
	"github.com/pullguard/pullguard/plugin/imageproxy"
	"github.com/pullguard/pullguard/plugin/running"
)

const defaultConfigPath = "/etc/pullguard/config.toml"

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", defaultConfigPath, "node config file (TOML)")
	reloadEvery := fs.Duration("reload-interval", 2*time.Second, "how often to look for config and policy changes (0 = only on SIGHUP)")
	if err := fs.Parse(args); err != nil {
		return cli.ParseError(err)
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
	bgCtx, stopBackground := context.WithCancel(context.Background())
	defer stopBackground()
	sh := shared{log: log, obs: m, facts: newFactsCache(cfg), background: enforce.NewBackground(bgCtx, 4, 256, log)}
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
	if err := checkEnforcement(cfg, log); err != nil {
		log.Error("refusing to start: enforcement would be off", "config", *configPath, "error", err)
		return 2
	}

	srv, err := imageproxy.New(imageproxy.Options{
		Upstream:          cfg.Server.UpstreamPath(),
		UpstreamNamespace: cfg.Server.UpstreamNamespace,
		OnUpstreamError:   m.upstreamError,
		MaxMessageBytes:   cfg.Server.MaxMessageBytes,
		Logger:            log,
	})
	if err != nil {
		log.Error("cannot start the image service", "error", err)
		return 2
	}
	// The gate is set before Serve: no pull is ever made undecided.
	srv.SetGate(imageproxy.NewEnforcer(comp.engine))

	gate, err := startNRI(bgCtx, cfg, comp, srv, m, log)
	if err != nil {
		log.Error("cannot start the NRI plugin", "error", err)
		return 2
	}
	if gate != nil {
		m.watchNRI(gate.plugin.Registered)
	}

	l, err := imageproxy.Listen(cfg.Server.Socket, cfg.Server.SocketFileMode(), cfg.Server.SocketGroup)
	if err != nil {
		log.Error("cannot listen", "socket", cfg.Server.Socket, "error", err)
		return 2
	}

	// The admin socket is always served: the installer waits on its
	// /readyz, and `pullguard status` reads it, without any TCP port.
	ops := opsMux(readiness{srv: srv, nri: gate}, m)
	adminL, err := imageproxy.Listen(cfg.Server.AdminSocket, 0o600, "")
	if err != nil {
		l.Close()
		log.Error("cannot listen on the admin socket", "socket", cfg.Server.AdminSocket, "error", err)
		return 2
	}
	httpSrvs := []*http.Server{startHTTP(adminL, ops, log)}
	if cfg.Metrics.Address != "" {
		ml, err := net.Listen("tcp", cfg.Metrics.Address)
		if err != nil {
			l.Close()
			_ = httpSrvs[0].Close()
			log.Error("cannot serve the metrics endpoint", "address", cfg.Metrics.Address, "error", err)
			return 2
		}
		httpSrvs = append(httpSrvs, startHTTP(ml, ops, log))
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()
	log.Info("pullguard serving", "socket", cfg.Server.Socket, "upstream", cfg.Server.UpstreamPath(),
		"nri_mode", cfg.NRI.Mode, "policy_hash", comp.engine.Policies().Hash(), "version", version)
	go notifyReady(bgCtx, gate, log)
	// The watchdog is fed by this loop itself: a loop stuck on anything
	// stops feeding it, and systemd restarts pullguard.
	var watchdog <-chan time.Time
	if d := watchdogInterval(); d > 0 {
		wt := time.NewTicker(d)
		defer wt.Stop()
		watchdog = wt.C
	}

	r := &reloader{
		path:  *configPath,
		build: func(c *config.Config) (*components, error) { return assemble(ctx, c, sh) },
		swap: func(c *components) {
			srv.SetGate(imageproxy.NewEnforcer(c.engine))
			gate.swap(bgCtx, c.engine)
		},
		log: log, metrics: m, running: cfg,
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
		case <-watchdog:
			watchdogPing()
		}
	}
	notifyStopping()

	// Drain in-flight calls (a pull can take a while), bounded. The NRI
	// plugin goes last: until then containerd's creates are still decided,
	// and once it is gone containerd refuses them.
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout.Duration)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown did not drain in time", "error", err)
	}
	stopBackground()
	gate.wait()
	for _, h := range httpSrvs {
		_ = h.Shutdown(sctx)
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

// readiness is what /readyz asks: containerd answers, and in enforce mode
// containerd has pullguard's NRI plugin registered (without it every create
// is refused, which is safe but not ready).
type readiness struct {
	srv *imageproxy.Server
	nri *nriGate
}

func (r readiness) ready(ctx context.Context) error {
	if err := r.srv.UpstreamReady(ctx); err != nil {
		return fmt.Errorf("containerd not ready: %w", err)
	}
	if r.nri != nil && !r.nri.plugin.Registered() {
		return errors.New("pullguard's NRI plugin is not registered with containerd: every container create is refused until it is")
	}
	return nil
}

// opsMux serves the operations endpoints: metrics, liveness, readiness, and
// the running workloads.
func opsMux(ready readiness, m *metrics) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc(running.StatusPath, func(w http.ResponseWriter, _ *http.Request) {
		if ready.nri == nil {
			http.Error(w, "pull-only mode: pullguard does not see running containers", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(ready.nri.running.Status())
	})
	mux.Handle("/metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := ready.ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// startHTTP serves h on l until Shutdown.
func startHTTP(l net.Listener, h http.Handler, log *slog.Logger) *http.Server {
	s := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := s.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("operations endpoint stopped", "address", l.Addr().String(), "error", err)
		}
	}()
	return s
}
