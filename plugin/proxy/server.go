// Package proxy is a transparent CRI gRPC proxy: kubelet talks to it as if it
// were containerd, every call is carried to containerd as HTTP/2 frames
// without being decoded (see tunnel.go), and only PullImage and
// CreateContainer are read and put before a Gate.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// DefaultMaxMessageBytes matches kubelet's CRI client and containerd's CRI
// server: 16 MiB in both directions.
const DefaultMaxMessageBytes = 16 << 20

// DefaultUpstreamNamespace is the containerd namespace the CRI plugin keeps
// its images in.
const DefaultUpstreamNamespace = "k8s.io"

// upstreamMaxBackoff caps the reconnect delay to containerd, so that once it
// is back calls work again within about this long, however long it was down.
// Dialling a unix socket is cheap, so a short cap costs nothing.
const upstreamMaxBackoff = time.Second

// flowWindow is the static HTTP/2 flow-control window of the proxy's own
// connection to containerd (pinned pulls, tagging, lookups).
const flowWindow = 1 << 20

// upstreamDialTimeout bounds connecting a client's tunnel to containerd.
const upstreamDialTimeout = 5 * time.Second

const (
	methodPullImage       = "/runtime.v1.ImageService/PullImage"
	methodRemoveImage     = "/runtime.v1.ImageService/RemoveImage"
	methodCreateContainer = "/runtime.v1.RuntimeService/CreateContainer"
)

// Options configure a Server.
type Options struct {
	// Upstream is containerd's CRI endpoint: "unix:///run/containerd/containerd.sock"
	// or a bare socket path.
	Upstream string
	// UpstreamNamespace is the containerd namespace used for image tagging
	// after pinned pulls. Default DefaultUpstreamNamespace.
	UpstreamNamespace string
	// MaxMessageBytes bounds the requests the proxy reads (PullImage,
	// CreateContainer) and the messages on its own connection to containerd.
	// Other calls pass through as frames: their limits are kubelet's and
	// containerd's. Default DefaultMaxMessageBytes.
	MaxMessageBytes int
	// Gate decides on PullImage and CreateContainer; nil forwards them too.
	Gate Gate
	// Logger receives operational messages; nil discards them.
	Logger *slog.Logger
	// OnUpstreamError, if set, is told of failures between the proxy and
	// containerd (metrics): a client connection that could not reach
	// containerd or lost it (method ""), and failed calls the proxy made
	// itself, with the status code.
	OnUpstreamError func(method string, code codes.Code)
}

// gateBox lets an interface value live in an atomic.Pointer.
type gateBox struct{ gate Gate }

// Server is the CRI proxy. Create it with New, run it with Serve, stop it with
// Shutdown.
type Server struct {
	log          *slog.Logger
	onError      func(method string, code codes.Code)
	upstreamPath string
	// upstream is the proxy's own connection to containerd, for the calls
	// it makes itself; client calls travel in tunnels.
	upstream  *grpc.ClientConn
	namespace string
	maxMsg    int
	gate      atomic.Pointer[gateBox]

	mu       sync.Mutex
	tunnels  map[*tunnel]struct{}
	listener net.Listener
	closing  bool
}

// New builds a Server and starts connecting to the upstream in the
// background; it does not fail when containerd is not up yet.
func New(opts Options) (*Server, error) {
	target, err := upstreamTarget(opts.Upstream)
	if err != nil {
		return nil, err
	}
	maxMsg := opts.MaxMessageBytes
	if maxMsg <= 0 {
		maxMsg = DefaultMaxMessageBytes
	}
	ns := opts.UpstreamNamespace
	if ns == "" {
		ns = DefaultUpstreamNamespace
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	bo := backoff.DefaultConfig
	bo.MaxDelay = upstreamMaxBackoff
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: 5 * time.Second}),
		grpc.WithInitialWindowSize(flowWindow),
		grpc.WithInitialConnWindowSize(flowWindow),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(maxMsg),
			grpc.MaxCallSendMsgSize(maxMsg),
		),
	)
	if err != nil {
		return nil, fmt.Errorf("create upstream client for %s: %w", target, err)
	}
	conn.Connect()

	s := &Server{
		log:          log,
		onError:      opts.OnUpstreamError,
		upstreamPath: strings.TrimPrefix(target, "unix://"),
		upstream:     conn,
		namespace:    ns,
		maxMsg:       maxMsg,
		tunnels:      make(map[*tunnel]struct{}),
	}
	s.SetGate(opts.Gate)
	return s, nil
}

// upstreamTarget turns the configured endpoint into a gRPC target. Only unix
// sockets are accepted: the CRI endpoint is local and unauthenticated.
func upstreamTarget(upstream string) (string, error) {
	switch {
	case upstream == "":
		return "", errors.New("upstream endpoint is empty")
	case strings.HasPrefix(upstream, "unix://"):
		if strings.TrimPrefix(upstream, "unix://") == "" {
			return "", fmt.Errorf("upstream endpoint %q has no socket path", upstream)
		}
		return upstream, nil
	case strings.Contains(upstream, "://"):
		return "", fmt.Errorf("upstream endpoint %q: only unix sockets are supported", upstream)
	default:
		return "unix://" + upstream, nil
	}
}

// SetGate replaces the Gate for calls that start afterwards (e.g. on config
// reload). nil makes the proxy a pure pass-through.
func (s *Server) SetGate(g Gate) {
	s.gate.Store(&gateBox{gate: g})
}

func (s *Server) currentGate() Gate {
	return s.gate.Load().gate
}

// imagesChanged tells the Gate, if it cares, that a pull or an image removal
// has just ended.
func (s *Server) imagesChanged() {
	if w, ok := s.currentGate().(imageWatcher); ok {
		w.ImagesChanged()
	}
}

// Serve accepts CRI connections on l until Shutdown. It returns nil after a
// Shutdown.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		_ = l.Close()
		return nil
	}
	s.listener = l
	s.mu.Unlock()
	for {
		conn, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return nil
			}
			if ne, ok := err.(interface{ Temporary() bool }); ok && ne.Temporary() {
				continue
			}
			return fmt.Errorf("serve CRI proxy on %s: %w", l.Addr(), err)
		}
		go s.carry(conn)
	}
}

// carry connects one client connection to containerd and runs its tunnel.
func (s *Server) carry(client net.Conn) {
	up, err := net.DialTimeout("unix", s.upstreamPath, upstreamDialTimeout)
	if err != nil {
		s.log.Warn("containerd unreachable", "upstream", s.upstreamPath, "err", err)
		s.observe("", codes.Unavailable)
		refuseUnavailable(client, fmt.Sprintf("pullguard: containerd at %s is unavailable: %v", s.upstreamPath, err))
		return
	}
	t := newTunnel(s, client, up)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		t.close()
		return
	}
	s.tunnels[t] = struct{}{}
	s.mu.Unlock()
	t.run()
	s.mu.Lock()
	delete(s.tunnels, t)
	s.mu.Unlock()
}

// Shutdown stops accepting connections, lets in-flight calls finish until ctx
// is done, then cuts the rest, and closes the upstream connection. The
// listener given to Serve is closed; one made by Listen thereby removes its
// socket file. It returns ctx's error if calls had to be cut short.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	l := s.listener
	tunnels := make([]*tunnel, 0, len(s.tunnels))
	for t := range s.tunnels {
		tunnels = append(tunnels, t)
	}
	s.mu.Unlock()
	if l != nil {
		_ = l.Close()
	}
	for _, t := range tunnels {
		// In goroutines: a client that does not read could block the
		// GOAWAY write until the deadline closes its connection.
		go t.drain()
	}
	var err error
	for _, t := range tunnels {
		select {
		case <-t.done:
		case <-ctx.Done():
			err = fmt.Errorf("shutdown: in-flight calls cut short: %w", ctx.Err())
			for _, t := range tunnels {
				t.close()
			}
		}
	}
	if cerr := s.upstream.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("shutdown: close upstream connection: %w", cerr)
	}
	return err
}

// UpstreamReady reports whether containerd answers a CRI Version call, for a
// readiness probe.
func (s *Server) UpstreamReady(ctx context.Context) error {
	_, err := runtimeapi.NewRuntimeServiceClient(s.upstream).Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return fmt.Errorf("upstream CRI Version: %w", err)
	}
	return nil
}

// observe reports a failure towards containerd to the OnUpstreamError hook.
func (s *Server) observe(method string, code codes.Code) {
	if s.onError != nil {
		s.onError(method, code)
	}
}
