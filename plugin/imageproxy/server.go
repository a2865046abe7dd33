// Package imageproxy serves the CRI ImageService on pullguard's socket: the
// endpoint kubelet's imageServiceEndpoint points at, while its runtime
// endpoint stays on containerd. grpc-go terminates every client connection;
// pullguard parses nothing of the wire itself. PullImage is decided and,
// when admitted, made by pullguard on its own connection to containerd,
// pinned to the verified digest. Every other image method (including ones
// newer than the compiled cri-api) is relayed as raw messages, with status,
// metadata and deadline. containerd only ever sees calls pullguard made.
package imageproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// DefaultMaxMessageBytes matches kubelet's CRI client and containerd's CRI
// server: 16 MiB in both directions.
const DefaultMaxMessageBytes = 16 << 20

// DefaultUpstreamNamespace is the containerd namespace CRI keeps images in.
const DefaultUpstreamNamespace = "k8s.io"

// Bounds on what one client can make pullguard hold. kubelet opens one
// connection and pulls a few images at a time; crictl opens one per command.
const (
	// DefaultMaxConnections bounds open client connections; more wait in
	// the listen backlog.
	DefaultMaxConnections = 64
	// DefaultMaxStreams bounds concurrent calls on one connection.
	DefaultMaxStreams = 32
	// maxHeaderListBytes bounds a call's decoded header list. CRI calls
	// carry a handful of short headers.
	maxHeaderListBytes = 64 << 10
	// DefaultHandshakeTimeout bounds a connection that never completes
	// HTTP/2's preface: until then it holds one of the MaxConnections.
	DefaultHandshakeTimeout = 10 * time.Second
	// keepaliveMinTime is the shortest ping interval a client may use
	// without being told to go away.
	keepaliveMinTime = 10 * time.Second
	// maxConnectionIdle closes connections that carry no call.
	maxConnectionIdle = 5 * time.Minute
)

// upstreamMaxBackoff caps the reconnect delay to containerd, so that calls
// work again within about this long once it is back.
const upstreamMaxBackoff = time.Second

// Method names pullguard acts on.
const (
	imageServicePrefix   = "/runtime.v1.ImageService/"
	runtimeServicePrefix = "/runtime.v1.RuntimeService/"
	methodPullImage      = imageServicePrefix + "PullImage"
	methodRemoveImage    = imageServicePrefix + "RemoveImage"
)

// unaryImageMethods are the unary image methods of the compiled cri-api:
// relayed with one Invoke. The others (StreamImages, and methods newer than
// the compiled cri-api) take the streaming relay, which carries any shape.
var unaryImageMethods = map[string]bool{
	imageServicePrefix + "ListImages":  true,
	imageServicePrefix + "ImageStatus": true,
	methodRemoveImage:                  true,
	imageServicePrefix + "ImageFsInfo": true,
}

// Options configure a Server.
type Options struct {
	// Upstream is containerd's socket: "unix:///run/containerd/containerd.sock"
	// or a bare path.
	Upstream string
	// UpstreamNamespace is the containerd namespace used to tag pinned pulls.
	UpstreamNamespace string
	// MaxMessageBytes bounds messages both ways. Default DefaultMaxMessageBytes.
	MaxMessageBytes int
	// MaxConnections and MaxStreams bound client connections and the calls
	// on each. Defaults DefaultMaxConnections, DefaultMaxStreams.
	MaxConnections int
	MaxStreams     int
	// HandshakeTimeout bounds how long a new connection may take to
	// complete HTTP/2's preface. Default DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// Gate decides on PullImage; nil relays it too.
	Gate Gate
	// OnImagesChanged is told when a pull or an image removal through
	// pullguard ended (the node's image records changed).
	OnImagesChanged func()
	Logger          *slog.Logger
	// OnUpstreamError is told of calls pullguard made to containerd that
	// failed, by method and code (metrics).
	OnUpstreamError func(method string, code codes.Code)
}

type gateBox struct{ gate Gate }

// Server is the image-service proxy. Create it with New, run it with Serve,
// stop it with Shutdown.
type Server struct {
	opts      Options
	log       *slog.Logger
	upstream  *grpc.ClientConn
	namespace string
	codec     rawCodec
	srv       *grpc.Server
	gate      atomic.Pointer[gateBox]
	changed   atomic.Pointer[func()]
	runtimeEP string // named in the refusal of runtime calls
}

// New builds a Server and starts connecting to containerd in the
// background; it does not fail when containerd is not up yet.
func New(opts Options) (*Server, error) {
	target, err := upstreamTarget(opts.Upstream)
	if err != nil {
		return nil, err
	}
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = DefaultMaxConnections
	}
	if opts.MaxStreams <= 0 {
		opts.MaxStreams = DefaultMaxStreams
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if opts.UpstreamNamespace == "" {
		opts.UpstreamNamespace = DefaultUpstreamNamespace
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
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
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(opts.MaxMessageBytes),
			grpc.MaxCallSendMsgSize(opts.MaxMessageBytes),
		),
	)
	if err != nil {
		return nil, fmt.Errorf("create client for containerd at %s: %w", target, err)
	}
	conn.Connect()
	s := &Server{
		opts: opts, log: opts.Logger, upstream: conn, namespace: opts.UpstreamNamespace, codec: codec,
		runtimeEP: target,
	}
	s.SetGate(opts.Gate)
	if opts.OnImagesChanged != nil {
		s.SetImagesChanged(opts.OnImagesChanged)
	}
	s.srv = grpc.NewServer(
		grpc.ForceServerCodecV2(codec),
		grpc.UnknownServiceHandler(s.handle),
		grpc.MaxRecvMsgSize(opts.MaxMessageBytes),
		grpc.MaxSendMsgSize(opts.MaxMessageBytes),
		grpc.MaxHeaderListSize(maxHeaderListBytes),
		grpc.MaxConcurrentStreams(uint32(opts.MaxStreams)),
		grpc.ConnectionTimeout(opts.HandshakeTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}),
		// A connection with no call for this long is closed, so idle ones
		// cannot hold the connection slots; kubelet's client reconnects on
		// its next call.
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: maxConnectionIdle}),
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

// SetGate replaces the Gate for calls that start afterwards (a reloaded
// config). nil relays PullImage undecided.
func (s *Server) SetGate(g Gate) { s.gate.Store(&gateBox{gate: g}) }

func (s *Server) currentGate() Gate { return s.gate.Load().gate }

// Upstream is pullguard's own connection to containerd, for the other parts
// that read containerd's records (image store, CRI status).
func (s *Server) Upstream() *grpc.ClientConn { return s.upstream }

// ImageService is a CRI image client on pullguard's connection to containerd.
func (s *Server) ImageService() runtimeapi.ImageServiceClient {
	return runtimeapi.NewImageServiceClient(s.upstream)
}

// Serve accepts CRI connections on l until Shutdown; it returns nil after a
// Shutdown.
func (s *Server) Serve(l net.Listener) error {
	err := s.srv.Serve(netutil.LimitListener(l, s.opts.MaxConnections))
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("serve CRI image service on %s: %w", l.Addr(), err)
	}
	return nil
}

// Shutdown stops accepting connections, lets in-flight calls finish until
// ctx is done, then cuts the rest, and closes the connection to containerd.
// The listener is closed, which removes a socket made by Listen.
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
		s.srv.Stop()
		<-done
		err = fmt.Errorf("shutdown: in-flight calls cut short: %w", ctx.Err())
	}
	if cerr := s.upstream.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("shutdown: close connection to containerd: %w", cerr)
	}
	return err
}

// UpstreamReady reports whether containerd answers an image-service call,
// for a readiness probe.
func (s *Server) UpstreamReady(ctx context.Context) error {
	if _, err := s.ImageService().ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{}); err != nil {
		return fmt.Errorf("containerd ImageFsInfo: %w", err)
	}
	return nil
}

// observe reports a failed call to containerd to the OnUpstreamError hook.
func (s *Server) observe(method string, err error) {
	if err == nil || s.opts.OnUpstreamError == nil {
		return
	}
	s.opts.OnUpstreamError(method, codeOf(err))
}

// SetImagesChanged sets the hook told when a pull or an image removal
// through pullguard ended.
func (s *Server) SetImagesChanged(f func()) { s.changed.Store(&f) }

func (s *Server) imagesChanged() {
	if f := s.changed.Load(); f != nil {
		(*f)()
	}
}
