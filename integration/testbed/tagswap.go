package testbed

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"
)

// TagSwapProxy is a registry front on loopback that moves a tag right after it has answered
// the first request for that tag's manifest: the race an attacker (or a racing CI job) with push
// rights could win between pullguard resolving and verifying a tag and containerd fetching it.
// It forwards everything else unchanged to the real registry behind it.
type TagSwapProxy struct {
	Host string // host:port of the proxy; images are named Host/repo:tag through it

	repo, tag string
	swap      func(context.Context) error
	srv       *httptest.Server

	mu       sync.Mutex
	swapped  bool
	swapErr  error
	requests []string
}

// StartTagSwapProxy starts a proxy in front of upstream (host:port, plain HTTP) that calls swap
// once, after serving the first GET or HEAD of /v2/<repo>/manifests/<tag> and before answering
// anything else on that connection. Close stops it.
func StartTagSwapProxy(upstream, repo, tag string, swap func(context.Context) error) *TagSwapProxy {
	p := &TagSwapProxy{repo: repo, tag: tag, swap: swap}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: upstream})
	tagPath := "/v2/" + repo + "/manifests/" + tag
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.record(r.Method + " " + r.URL.Path)
		rp.ServeHTTP(w, r)
		if r.URL.Path != tagPath || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
			return
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.swapped {
			return
		}
		p.swapped = true
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 30*time.Second)
		defer cancel()
		p.swapErr = p.swap(ctx)
		p.requests = append(p.requests, "(tag moved)")
	}))
	p.Host = strings.TrimPrefix(p.srv.URL, "http://")
	return p
}

func (p *TagSwapProxy) record(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests = append(p.requests, s)
}

// Swapped reports whether the tag was moved, and the swap's error.
func (p *TagSwapProxy) Swapped() (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.swapped, p.swapErr
}

// Requests lists "METHOD path" of every request served so far, in order, with "(tag moved)"
// where the swap happened.
func (p *TagSwapProxy) Requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.requests...)
}

// Close stops the proxy.
func (p *TagSwapProxy) Close() { p.srv.Close() }
