// Package proxy is a transparent CRI gRPC proxy: kubelet talks to it as if it
// were containerd, every call is forwarded upstream as raw bytes, and only
// PullImage and CreateContainer are decoded and put before a Gate.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
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

// flowWindow is the static HTTP/2 flow-control window on both sides.
const flowWindow = 1 << 20

const (
	methodPullImage       = "/runtime.v1.ImageService/PullImage"
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
	// MaxMessageBytes bounds every message in both directions and on both
	// sides. Default DefaultMaxMessageBytes.
	MaxMessageBytes int
	// Gate decides on PullImage and CreateContainer; nil forwards them too.
	Gate Gate
	// Logger receives operational messages; nil discards them.
	Logger *slog.Logger
	// OnUpstreamError, if set, is told of every call that failed between the
	// proxy and containerd, with the status code the client got (metrics).
	OnUpstreamError func(method string, code codes.Code)
}

type methodKind uint8

const (
	// kindStream (the zero value) is any method not known to be unary,
	// including methods newer than the compiled cri-api.
	kindStream methodKind = iota
	kindUnary
	kindPull
	kindCreate
)

// gateBox lets an interface value live in an atomic.Pointer.
type gateBox struct{ gate Gate }

// Server is the CRI proxy. Create it with New, run it with Serve, stop it with
// Shutdown.
type Server struct {
	log      *slog.Logger
	onError  func(method string, code codes.Code)
	upstream *grpc.ClientConn
	srv      *grpc.Server
	codec    rawCodec
	// codecOpt is built once: every forwarded call uses it.
	codecOpt  grpc.CallOption
	namespace string
	methods   map[string]methodKind
	gate      atomic.Pointer[gateBox]
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
	codec, err := newRawCodec()
	if err != nil {
		return nil, err
	}

	bo := backoff.DefaultConfig
	bo.MaxDelay = upstreamMaxBackoff
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: 5 * time.Second}),
		// Static windows turn off BDP estimation, whose PING round trips
		// add syscalls to every small call; on a unix socket there is no
		// bandwidth-delay product to discover.
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
		log:       log,
		onError:   opts.OnUpstreamError,
		upstream:  conn,
		codec:     codec,
		codecOpt:  grpc.ForceCodecV2(codec),
		namespace: ns,
		methods:   knownMethods(),
	}
	s.SetGate(opts.Gate)
	s.srv = grpc.NewServer(
		// Reused handler goroutines keep their grown stacks: a fresh
		// goroutine per call pays runtime.morestack on the deep
		// server+client call path, on every call.
		grpc.NumStreamWorkers(uint32(max(4, 2*runtime.GOMAXPROCS(0)))),
		grpc.InitialWindowSize(flowWindow),
		grpc.InitialConnWindowSize(flowWindow),
		grpc.ForceServerCodecV2(codec),
		grpc.UnknownServiceHandler(s.handle),
		grpc.MaxRecvMsgSize(maxMsg),
		grpc.MaxSendMsgSize(maxMsg),
	)
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

// knownMethods classifies the compiled cri-api methods: unary ones take the
// cheaper unary path, the two intercepted ones go to the Gate, the rest
// (streams and anything unknown) take the generic stream path.
func knownMethods() map[string]methodKind {
	m := make(map[string]methodKind)
	for _, sd := range []*grpc.ServiceDesc{&runtimeapi.RuntimeService_ServiceDesc, &runtimeapi.ImageService_ServiceDesc} {
		for _, md := range sd.Methods {
			m["/"+sd.ServiceName+"/"+md.MethodName] = kindUnary
		}
	}
	m[methodPullImage] = kindPull
	m[methodCreateContainer] = kindCreate
	return m
}

// SetGate replaces the Gate for calls that start afterwards (e.g. on config
// reload). nil makes the proxy a pure pass-through.
func (s *Server) SetGate(g Gate) {
	s.gate.Store(&gateBox{gate: g})
}

func (s *Server) currentGate() Gate {
	return s.gate.Load().gate
}

// Serve accepts CRI connections on l until Shutdown. It returns nil after a
// Shutdown.
func (s *Server) Serve(l net.Listener) error {
	if err := s.srv.Serve(l); err != nil {
		return fmt.Errorf("serve CRI proxy on %s: %w", l.Addr(), err)
	}
	return nil
}

// Shutdown stops accepting connections, lets in-flight calls finish until ctx
// is done, then cancels the rest, and closes the upstream connection. The
// listener given to Serve is closed; one made by Listen thereby removes its
// socket file. It returns ctx's error if calls had to be cut short.
func (s *Server) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.srv.GracefulStop()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("shutdown: in-flight calls cut short: %w", ctx.Err())
		s.srv.Stop()
		<-done
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

// observe reports a failed upstream call to the OnUpstreamError hook.
func (s *Server) observe(method string, err error) {
	if err != nil && s.onError != nil {
		s.onError(method, status.Code(err))
	}
}
