package testbed

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// maxMsg is what kubelet allows on its CRI connections.
const maxMsg = 16 << 20

// CRIClient is a CRI connection as kubelet opens it (unix socket, 16 MiB messages).
type CRIClient struct {
	Conn    *grpc.ClientConn
	Runtime runtimeapi.RuntimeServiceClient
	Image   runtimeapi.ImageServiceClient
}

// DialCRI opens a CRI client to a unix socket path (with or without the unix:// prefix). The
// connection is lazy: it does not fail when nothing listens yet.
func DialCRI(socket string) (*CRIClient, error) {
	target := "unix://" + strings.TrimPrefix(socket, "unix://")
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsg), grpc.MaxCallSendMsgSize(maxMsg)),
	)
	if err != nil {
		return nil, fmt.Errorf("dial CRI %s: %w", target, err)
	}
	return &CRIClient{Conn: conn, Runtime: runtimeapi.NewRuntimeServiceClient(conn), Image: runtimeapi.NewImageServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *CRIClient) Close() error { return c.Conn.Close() }

// criReady succeeds when the runtime answers Version and reports RuntimeReady.
func criReady(ctx context.Context, socket string) error {
	c, err := DialCRI(socket)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Runtime.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		return fmt.Errorf("CRI Version: %w", err)
	}
	st, err := c.Runtime.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		return fmt.Errorf("CRI Status: %w", err)
	}
	for _, cond := range st.GetStatus().GetConditions() {
		if cond.GetType() == runtimeapi.RuntimeReady && !cond.GetStatus() {
			return fmt.Errorf("CRI runtime not ready: %s %s", cond.GetReason(), cond.GetMessage())
		}
	}
	return nil
}

// imageServiceReady succeeds when an image service answers ImageFsInfo, as kubelet checks its
// image endpoint at start.
func imageServiceReady(ctx context.Context, socket string) error {
	c, err := DialCRI(socket)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Image.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{}); err != nil {
		return fmt.Errorf("CRI ImageFsInfo: %w", err)
	}
	return nil
}
