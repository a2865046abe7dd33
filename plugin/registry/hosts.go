package registry

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Capability is what an endpoint may be used for, as in containerd's
// hosts.toml "capabilities".
type Capability uint8

const (
	CapPull Capability = 1 << iota
	CapResolve
	CapPush
	CapReferrers

	capAll = CapPull | CapResolve | CapPush | CapReferrers
)

// Endpoint is one way to reach a registry: a mirror from hosts.toml or the
// registry itself. Endpoints are tried in order, like containerd does.
type Endpoint struct {
	Scheme       string // "http" or "https"
	Host         string // host[:port]
	Path         string // API root, "/v2" unless override_path
	Capabilities Capability
	Header       http.Header
	SkipVerify   *bool       // nil: not configured for this endpoint
	CAFiles      []string    // absolute paths
	ClientPairs  [][2]string // cert file, key file ("" = key in the cert file)
	DialTimeout  time.Duration
}

// hostsFileName is the file containerd reads inside a certs.d host directory.
const hostsFileName = "hosts.toml"

// hostDirFor finds the certs.d directory for host the way containerd does:
// "host_port_" first (for host:port), then "host:port", then "_default".
// "" means no directory applies.
func hostDirFor(root, host string) (string, error) {
	var candidates []string
	if i := strings.LastIndex(host, ":"); i > 0 {
		candidates = append(candidates, filepath.Join(root, host[:i]+"_"+host[i+1:]+"_"))
	}
	candidates = append(candidates, filepath.Join(root, host), filepath.Join(root, "_default"))
	for _, dir := range candidates {
		_, err := os.Stat(dir)
		if err == nil {
			return dir, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("look up hosts directory for %s: %w", host, err)
		}
	}
	return "", nil
}

// hostFileEntry is one table of hosts.toml (the root table or a [host."url"]).
type hostFileEntry struct {
	Capabilities []string       `toml:"capabilities"`
	CA           any            `toml:"ca"`
	Client       any            `toml:"client"`
	SkipVerify   *bool          `toml:"skip_verify"`
	Header       map[string]any `toml:"header"`
	OverridePath bool           `toml:"override_path"`
	DialTimeout  string         `toml:"dial_timeout"`
}

type hostsFile struct {
	hostFileEntry
	Server string                   `toml:"server"`
	Host   map[string]hostFileEntry `toml:"host"`
}

// parseHostsFile parses a containerd hosts.toml. Relative file names are
// resolved against baseDir. The [host."..."] endpoints come first in file
// order; the root table (server = ...) comes last, and has an empty Host
// when the file names no server (the caller fills in the registry itself).
func parseHostsFile(baseDir string, data []byte) ([]Endpoint, error) {
	var f hostsFile
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", hostsFileName, err)
	}
	// File order matters (mirrors are tried in order) and a Go map loses it;
	// the metadata keys keep it.
	var order []string
	for _, key := range md.Keys() {
		if len(key) == 2 && key[0] == "host" && !slices.Contains(order, key[1]) {
			order = append(order, key[1])
		}
	}
	var endpoints []Endpoint
	for _, server := range order {
		if server == "" {
			return nil, fmt.Errorf("%s: [host.\"\"] names no server", hostsFileName)
		}
		ep, err := parseHostEntry(server, baseDir, f.Host[server])
		if err != nil {
			return nil, fmt.Errorf("%s: host %q: %w", hostsFileName, server, err)
		}
		endpoints = append(endpoints, ep)
	}
	root, err := parseHostEntry(f.Server, baseDir, f.hostFileEntry)
	if err != nil {
		return nil, fmt.Errorf("%s: server %q: %w", hostsFileName, f.Server, err)
	}
	return append(endpoints, root), nil
}

func parseHostEntry(server, baseDir string, e hostFileEntry) (Endpoint, error) {
	var ep Endpoint
	if server != "" {
		if !strings.HasPrefix(server, "http") {
			server = "https://" + server
		}
		u, err := url.Parse(server)
		if err != nil {
			return Endpoint{}, fmt.Errorf("parse server: %w", err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return Endpoint{}, fmt.Errorf("unsupported scheme %q", u.Scheme)
		}
		if u.Host == "" {
			return Endpoint{}, errors.New("server has no host")
		}
		ep.Scheme, ep.Host = u.Scheme, u.Host
		switch p := path.Clean("/" + u.Path); {
		case u.Path == "" || p == "/":
			ep.Path = "/v2"
			if e.OverridePath {
				ep.Path = ""
			}
		case e.OverridePath || strings.HasSuffix(p, "/v2"):
			ep.Path = p
		default:
			ep.Path = p + "/v2"
		}
	}
	if len(e.Capabilities) == 0 {
		ep.Capabilities = capAll
	}
	for _, c := range e.Capabilities {
		switch strings.ToLower(c) {
		case "pull":
			ep.Capabilities |= CapPull
		case "resolve":
			ep.Capabilities |= CapResolve
		case "push":
			ep.Capabilities |= CapPush
		case "referrers":
			ep.Capabilities |= CapReferrers
		default:
			return Endpoint{}, fmt.Errorf("unknown capability %q", c)
		}
	}
	ep.SkipVerify = e.SkipVerify
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(baseDir, p)
	}
	switch ca := e.CA.(type) {
	case nil:
	case string:
		ep.CAFiles = []string{abs(ca)}
	case []any:
		for _, v := range ca {
			s, ok := v.(string)
			if !ok {
				return Endpoint{}, fmt.Errorf("ca: %v is not a string", v)
			}
			ep.CAFiles = append(ep.CAFiles, abs(s))
		}
	default:
		return Endpoint{}, fmt.Errorf("ca: invalid type %T", ca)
	}
	switch client := e.Client.(type) {
	case nil:
	case string:
		ep.ClientPairs = [][2]string{{abs(client), ""}}
	case []any:
		for _, item := range client {
			switch p := item.(type) {
			case string:
				ep.ClientPairs = append(ep.ClientPairs, [2]string{abs(p), ""})
			case []any:
				if len(p) != 2 {
					return Endpoint{}, fmt.Errorf("client: pair %v must have 2 elements", p)
				}
				c, ok1 := p[0].(string)
				k, ok2 := p[1].(string)
				if !ok1 || !ok2 {
					return Endpoint{}, fmt.Errorf("client: pair %v must be strings", p)
				}
				ep.ClientPairs = append(ep.ClientPairs, [2]string{abs(c), abs(k)})
			default:
				return Endpoint{}, fmt.Errorf("client: invalid type %T", p)
			}
		}
	default:
		return Endpoint{}, fmt.Errorf("client: invalid type %T", client)
	}
	if len(e.Header) > 0 {
		ep.Header = http.Header{}
		for k, v := range e.Header {
			switch val := v.(type) {
			case string:
				ep.Header.Add(k, val)
			case []any:
				for _, item := range val {
					s, ok := item.(string)
					if !ok {
						return Endpoint{}, fmt.Errorf("header %q: %v is not a string", k, item)
					}
					ep.Header.Add(k, s)
				}
			default:
				return Endpoint{}, fmt.Errorf("header %q: invalid type %T", k, v)
			}
		}
	}
	if e.DialTimeout != "" {
		d, err := time.ParseDuration(e.DialTimeout)
		if err != nil {
			return Endpoint{}, fmt.Errorf("dial_timeout: %w", err)
		}
		if d < 0 {
			return Endpoint{}, fmt.Errorf("dial_timeout: negative duration %s", e.DialTimeout)
		}
		ep.DialTimeout = d
	}
	return ep, nil
}

// isLoopback reports whether host (with or without port) is localhost or a
// loopback IP.
func isLoopback(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Endpoints lists, in the order they are tried, the endpoints for a registry
// host (a reference's domain, e.g. "docker.io" or "127.0.0.1:5000"): the
// hosts.toml mirrors, then the registry itself; with the client's PlainHTTP
// and InsecureSkipVerify lists applied to the registry's own endpoint.
//
// Deviation from containerd, on purpose: containerd probes https first and
// falls back to http for loopback hosts with a port; pullguard goes straight
// to http for those (nothing but the local machine is involved), unless the
// host is listed in InsecureSkipVerify or hosts.toml names an https server.
func (c *Client) Endpoints(host string) ([]Endpoint, error) {
	var endpoints []Endpoint
	if c.opts.HostsDir != "" {
		dir, err := hostDirFor(c.opts.HostsDir, host)
		if err != nil {
			return nil, err
		}
		if dir != "" {
			data, err := os.ReadFile(filepath.Join(dir, hostsFileName))
			switch {
			case err == nil:
				endpoints, err = parseHostsFile(dir, data)
				if err != nil {
					// containerd falls back to certificate files on a bad
					// hosts.toml; pullguard refuses: a silently ignored
					// mirror or CA setting would make verification and pull
					// disagree about where images come from.
					return nil, fmt.Errorf("hosts config for %s in %s: %w", host, dir, err)
				}
			case errors.Is(err, os.ErrNotExist):
				endpoints, err = certFilesEndpoint(dir)
				if err != nil {
					return nil, fmt.Errorf("hosts config for %s in %s: %w", host, dir, err)
				}
			default:
				return nil, fmt.Errorf("hosts config for %s: %w", host, err)
			}
		}
	}
	if len(endpoints) == 0 {
		endpoints = []Endpoint{{Capabilities: capAll}}
	}
	last := &endpoints[len(endpoints)-1]
	if last.Host == "" {
		last.Host, last.Scheme, last.Path = host, "https", "/v2"
		switch {
		case host == "docker.io":
			last.Host = dockerHubHost
		case isLoopback(host) && !slices.Contains(c.opts.InsecureSkipVerify, host):
			if _, port, _ := net.SplitHostPort(host); port != "" && port != "443" {
				last.Scheme = "http"
			}
		}
		if slices.Contains(c.opts.PlainHTTP, host) {
			last.Scheme = "http"
		}
	}
	// InsecureSkipVerify names registry hosts; it applies to any endpoint
	// with that host (the registry itself or a mirror listed by name).
	for i := range endpoints {
		if slices.Contains(c.opts.InsecureSkipVerify, endpoints[i].Host) {
			t := true
			endpoints[i].SkipVerify = &t
		}
	}
	return endpoints, nil
}

// certFilesEndpoint reads a certs.d directory without hosts.toml in Docker's
// layout: *.crt are CAs, *.cert with a matching *.key are client pairs.
func certFilesEndpoint(dir string) ([]Endpoint, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	ep := Endpoint{Capabilities: capAll}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() {
			continue
		}
		switch {
		case strings.HasSuffix(name, ".crt"):
			ep.CAFiles = append(ep.CAFiles, filepath.Join(dir, name))
		case strings.HasSuffix(name, ".cert"):
			key := strings.TrimSuffix(name, ".cert") + ".key"
			pair := [2]string{filepath.Join(dir, name), ""}
			if _, err := os.Stat(filepath.Join(dir, key)); err == nil {
				pair[1] = filepath.Join(dir, key)
			}
			ep.ClientPairs = append(ep.ClientPairs, pair)
		}
	}
	return []Endpoint{ep}, nil
}
