// Package registry reads what pullguard needs from OCI registries: tag to
// digest resolution, referrers (signatures, scan reports), manifests and
// blobs. Every call is bounded in time and size, content is verified against
// its digest, and credentials are used only for the call they came with.
// Registry endpoints honour containerd's certs.d/hosts.toml so that the node
// verifies images from where containerd pulls them.
package registry

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// Options configure a Client. Zero sizes and durations take the defaults.
type Options struct {
	HostsDir           string   // containerd certs.d directory (hosts.toml per registry host); "" for none
	PlainHTTP          []string // registry hosts reached over plain http
	InsecureSkipVerify []string // registry hosts whose TLS certificate is not verified
	CAFiles            []string // extra PEM CA bundles trusted for every registry
	Timeout            time.Duration
	MaxManifestBytes   int64
	MaxBlobBytes       int64
	MaxReferrers       int
	Logger             *slog.Logger
}

// Defaults applied by New to zero Options fields.
const (
	DefaultTimeout          = 10 * time.Second
	DefaultMaxManifestBytes = 4 << 20
	DefaultMaxBlobBytes     = 8 << 20
	DefaultMaxReferrers     = 256
)

// Client reaches registries. It is safe for concurrent use; it holds no
// credentials (they come with each call).
type Client struct {
	opts    Options
	log     *slog.Logger
	rootCAs *x509.CertPool

	mu         sync.Mutex
	transports map[string]*http.Transport // by TLS/dial settings, for connection reuse
}

// New checks opts and loads the CA files (an unreadable or non-PEM file is
// an error naming it).
func New(opts Options) (*Client, error) {
	if opts.Timeout < 0 || opts.MaxManifestBytes < 0 || opts.MaxBlobBytes < 0 || opts.MaxReferrers < 0 {
		return nil, errors.New("registry options: negative timeout or bound")
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MaxManifestBytes == 0 {
		opts.MaxManifestBytes = DefaultMaxManifestBytes
	}
	if opts.MaxBlobBytes == 0 {
		opts.MaxBlobBytes = DefaultMaxBlobBytes
	}
	if opts.MaxReferrers == 0 {
		opts.MaxReferrers = DefaultMaxReferrers
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Client{opts: opts, log: logger, transports: map[string]*http.Transport{}}
	if len(opts.CAFiles) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		for _, f := range opts.CAFiles {
			if err := appendCAFile(pool, f); err != nil {
				return nil, err
			}
		}
		c.rootCAs = pool
	}
	return c, nil
}

// Options returns the effective options (defaults filled in).
func (c *Client) Options() Options { return c.opts }

func appendCAFile(pool *x509.CertPool, file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("read CA file %s: %w", file, err)
	}
	if !pool.AppendCertsFromPEM(data) {
		return fmt.Errorf("CA file %s: no PEM certificate found", file)
	}
	return nil
}

// maxTransports bounds the transport cache (one per distinct TLS setting).
const maxTransports = 64

// transportFor returns a shared transport for the TLS and dial settings of
// ep. The key hashes the referenced files' contents so a rotated CA or
// client certificate takes effect without a restart.
func (c *Client) transportFor(ep Endpoint) (*http.Transport, error) {
	h := sha256.New()
	fmt.Fprintf(h, "skip=%v dial=%d\n", ep.SkipVerify != nil && *ep.SkipVerify, ep.DialTimeout)
	files := map[string][]byte{}
	read := func(f string) ([]byte, error) {
		if b, ok := files[f]; ok {
			return b, nil
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("endpoint %s: %w", ep.Host, err)
		}
		files[f] = b
		fmt.Fprintf(h, "%s %d\n", f, len(b))
		h.Write(b)
		return b, nil
	}
	for _, f := range ep.CAFiles {
		if _, err := read(f); err != nil {
			return nil, err
		}
	}
	for _, p := range ep.ClientPairs {
		for _, f := range p {
			if f == "" {
				continue
			}
			if _, err := read(f); err != nil {
				return nil, err
			}
		}
	}
	key := hex.EncodeToString(h.Sum(nil))

	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.transports[key]; ok {
		return t, nil
	}
	if len(c.transports) >= maxTransports {
		// Rotated certificates leave stale entries behind; start over
		// rather than grow without bound.
		for _, t := range c.transports {
			t.CloseIdleConnections()
		}
		clear(c.transports)
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: c.rootCAs}
	if ep.SkipVerify != nil && *ep.SkipVerify {
		tlsConf.InsecureSkipVerify = true
	}
	if len(ep.CAFiles) > 0 {
		pool := c.rootCAs
		if pool == nil {
			var err error
			if pool, err = x509.SystemCertPool(); err != nil {
				pool = x509.NewCertPool()
			}
		} else {
			pool = pool.Clone()
		}
		for _, f := range ep.CAFiles {
			if !pool.AppendCertsFromPEM(files[f]) {
				return nil, fmt.Errorf("endpoint %s: CA file %s: no PEM certificate found", ep.Host, f)
			}
		}
		tlsConf.RootCAs = pool
	}
	for _, p := range ep.ClientPairs {
		keyPEM := files[p[0]]
		if p[1] != "" {
			keyPEM = files[p[1]]
		}
		cert, err := tls.X509KeyPair(files[p[0]], keyPEM)
		if err != nil {
			return nil, fmt.Errorf("endpoint %s: client certificate %s: %w", ep.Host, p[0], err)
		}
		tlsConf.Certificates = append(tlsConf.Certificates, cert)
	}
	dialTimeout := ep.DialTimeout
	if dialTimeout == 0 || dialTimeout > c.opts.Timeout {
		dialTimeout = c.opts.Timeout
	}
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   c.opts.Timeout,
		ResponseHeaderTimeout: c.opts.Timeout,
		MaxIdleConns:          32,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	c.transports[key] = t
	return t, nil
}

// endpointTransport adapts requests built for the standard "/v2" API root to
// an endpoint's configured path, headers and, for mirrors, the "ns" query
// parameter containerd sends so a multi-registry mirror knows the upstream.
type endpointTransport struct {
	base     http.RoundTripper
	ep       Endpoint
	upstream string // the reference's registry domain; "" when ep is the registry itself
}

func (t *endpointTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host != t.ep.Host {
		return t.base.RoundTrip(req) // token endpoint or redirect target
	}
	req = req.Clone(req.Context())
	if t.ep.Path != "/v2" {
		if rest, ok := strings.CutPrefix(req.URL.Path, "/v2"); ok {
			req.URL.Path = t.ep.Path + rest
			req.URL.RawPath = ""
		}
	}
	if t.upstream != "" {
		q := req.URL.Query()
		q.Set("ns", t.upstream)
		req.URL.RawQuery = q.Encode()
	}
	for k, vs := range t.ep.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	return t.base.RoundTrip(req)
}
