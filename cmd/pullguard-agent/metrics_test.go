package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
)

// TestMetricsForwarder: the pod's metrics endpoint answers the daemon's metrics and health from
// its admin socket, and nothing else the socket serves.
func TestMetricsForwarder(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	daemon := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "daemon "+r.URL.Path)
	})}
	go func() { _ = daemon.Serve(l) }()
	defer daemon.Close()
	srv := httptest.NewServer(metricsForwarder(sock))
	defer srv.Close()
	for path, want := range map[string]int{"/metrics": 200, "/healthz": 200, "/readyz": 200, "/v1/status": 404, "/": 404} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || (want == 200 && !strings.Contains(string(body), "daemon "+path)) {
			t.Errorf("GET %s: %d %q, want %d from the daemon", path, resp.StatusCode, body, want)
		}
	}
	if resp, err := http.Post(srv.URL+"/metrics", "text/plain", nil); err != nil || resp.StatusCode == 200 {
		t.Errorf("POST /metrics forwarded: %v %v", resp, err)
	}
}
