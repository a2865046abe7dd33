package running

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// StatusPath is where the daemon's admin socket serves the running
// workloads as JSON.
const StatusPath = "/v1/status"

// maxStatusBytes bounds the status answer read from the daemon.
const maxStatusBytes = 64 << 20

// FetchStatus asks the daemon on its admin socket for its view of the
// running containers; raw is the answer as sent.
func FetchStatus(ctx context.Context, socket string) (st *Status, raw []byte, err error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://pullguard"+StatusPath, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("ask the daemon on %s: %w", socket, err)
	}
	defer resp.Body.Close()
	raw, err = io.ReadAll(io.LimitReader(resp.Body, maxStatusBytes))
	if err != nil {
		return nil, nil, fmt.Errorf("read the daemon's status: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("daemon on %s: %s: %s", socket, resp.Status, strings.TrimSpace(string(raw)))
	}
	st = &Status{}
	if err := json.Unmarshal(raw, st); err != nil {
		return nil, nil, fmt.Errorf("decode the daemon's status: %w", err)
	}
	return st, raw, nil
}
