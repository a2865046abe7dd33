package installer

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Prober tells when a CRI endpoint at a unix socket answers.
type Prober interface {
	Ready(ctx context.Context, socketPath string) error
}

// CRIProber calls runtime.v1 Version through the socket, as kubelet does
// first, until it succeeds or ctx ends. Through pullguard that proves the
// whole path kubelet will use: pullguard listening and its upstream answering.
type CRIProber struct {
	// Interval between attempts; zero means 500ms.
	Interval time.Duration
}

func (p CRIProber) Ready(ctx context.Context, socketPath string) error {
	interval := p.Interval
	if interval <= 0 {
		interval = 500 * time.Millisecond
	}
	conn, err := grpc.NewClient("unix://"+socketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial %s: %w", socketPath, err)
	}
	defer conn.Close()
	client := runtimeapi.NewRuntimeServiceClient(conn)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var last error
	for {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := client.Version(attempt, &runtimeapi.VersionRequest{Version: "v1"})
		cancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRI Version on %s: %w (last error: %v)", socketPath, ctx.Err(), last)
		case <-tick.C:
		}
	}
}
