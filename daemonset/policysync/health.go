package policysync

import (
	"fmt"
	"net/http"
	"time"
)

// Handler serves /healthz (the agent runs) and /readyz (the node's synced policies follow the
// cluster). A 503 from /readyz says why and that the node still enforces what it has on disk.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		h := a.Health()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !h.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, h.Describe())
	})
	return mux
}

// Describe is a one-line account of the state, for /readyz and logs.
func (h Health) Describe() string {
	last := "never"
	if !h.LastWrite.IsZero() {
		last = h.LastWrite.UTC().Format(time.RFC3339)
	}
	switch {
	case !h.Synced && !h.Connected:
		return fmt.Sprintf("not synced: API server unreachable (%s); the node keeps enforcing the %d policies on disk", h.LastError, h.OnDisk)
	case !h.Synced:
		return fmt.Sprintf("not synced yet: listing policies; the node keeps enforcing the %d policies on disk", h.OnDisk)
	case !h.Connected:
		return fmt.Sprintf("API server unreachable since %s (%s); the node keeps enforcing its last synced %d policies (written %s)",
			h.Disconnect.UTC().Format(time.RFC3339), h.LastError, h.OnDisk, last)
	}
	return fmt.Sprintf("synced: %d policies on disk (last written %s), %d objects rejected, status writer: %v", h.OnDisk, last, h.Rejected, h.Leader)
}
