package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"
)

// forwardedPaths are what the metrics endpoint of the sync container
// answers, from the node daemon's admin socket: metrics and health, never
// the running-workload status (it names images and pods).
var forwardedPaths = []string{"/metrics", "/healthz", "/readyz"}

// metricsForwarder serves the node daemon's metrics on the pod's own
// network: Prometheus scrapes the pod (a PodMonitor), a NetworkPolicy can
// restrict who may, and the daemon itself listens on no TCP port.
func metricsForwarder(adminSocket string) http.Handler {
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(&url.URL{Scheme: "http", Host: "pullguard"})
			r.Out.Host = "pullguard"
		},
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", adminSocket)
			},
			ResponseHeaderTimeout: 10 * time.Second,
			MaxIdleConns:          2,
		},
	}
	mux := http.NewServeMux()
	for _, p := range forwardedPaths {
		mux.HandleFunc("GET "+p, proxy.ServeHTTP)
	}
	return mux
}

// serveMetrics serves the forwarder on addr until ctx ends.
func serveMetrics(ctx context.Context, addr, adminSocket string, log *slog.Logger) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s := &http.Server{Handler: metricsForwarder(adminSocket), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(sctx)
	}()
	go func() {
		if err := s.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", "address", addr, "error", err)
		}
	}()
	log.Info("serving the node daemon's metrics", "address", l.Addr().String(), "admin_socket", adminSocket)
	return nil
}
