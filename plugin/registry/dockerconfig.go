package registry

import (
	"cmp"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path"
	"slices"
	"strings"
)

// maxDockerConfigBytes bounds a credentials file: it is a handful of hosts.
const maxDockerConfigBytes = 1 << 20

// LoadDockerConfig reads the "auths" of a docker config.json — the format of
// a kubernetes.io/dockerconfigjson Secret — and returns a lookup that picks,
// for a registry host and repository, the credentials kubelet would pull
// with (see dockerKeyring). Errors never quote the file's content beyond a
// key's server name.
func LoadDockerConfig(path string) (CredentialFunc, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read registry credentials: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxDockerConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read registry credentials %s: %w", path, err)
	}
	if len(data) > maxDockerConfigBytes {
		return nil, fmt.Errorf("registry credentials %s: larger than %d bytes", path, maxDockerConfigBytes)
	}
	k, err := parseDockerConfig(data)
	if err != nil {
		return nil, fmt.Errorf("registry credentials %s: %w", path, err)
	}
	return k.lookup, nil
}

// parseDockerConfig reads a docker config.json's auths into a keyring.
func parseDockerConfig(data []byte) (*dockerKeyring, error) {
	var doc struct {
		Auths map[string]struct {
			Auth          string `json:"auth"`
			Username      string `json:"username"`
			Password      string `json:"password"`
			IdentityToken string `json:"identitytoken"`
			RegistryToken string `json:"registrytoken"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		// The decoder's message may quote the file, which holds secrets.
		return nil, fmt.Errorf("not a docker config.json")
	}
	k := &dockerKeyring{}
	for server, a := range doc.Auths {
		c := &Credentials{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf("auth for %s is not base64", server)
			}
			u, p, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, fmt.Errorf("auth for %s is not user:password", server)
			}
			c.Username, c.Password = u, p
		}
		e, err := parseAuthKey(server)
		if err != nil {
			return nil, fmt.Errorf("auths key %q: %w", server, err)
		}
		e.creds = c
		k.entries = append(k.entries, e)
	}
	slices.SortFunc(k.entries, (*authEntry).compare)
	return k, nil
}

// dockerKeyring picks credentials for an image the way kubelet's keyring
// does, so that checks made with the node's credentials (or check
// --docker-config) authenticate as kubelet's pull of the same image would:
//
//   - a key is a server address, with or without a scheme, optionally with a
//     repository path ("registry.io/team-a"); a leading "/v1/" or "/v2/" is
//     the API root, not part of the path;
//   - the key's host may hold globs per DNS label ("*.example.com",
//     "*.*.example.com"): each label of the key matches one label of the
//     host, so "*.example.com" matches "a.example.com" but neither
//     "example.com" nor "a.b.example.com"; a port must be equal;
//   - the key's path must be a prefix of the repository, segment by segment:
//     "registry.io/team" is for "registry.io/team/app", never for
//     "registry.io/teamx/app" (kubelet compares the bare strings; a key
//     meant for one team must not hand its secret to another);
//   - docker hub's spellings ("docker.io", "index.docker.io",
//     "registry-1.docker.io", "https://index.docker.io/v1/") are one host;
//   - of the keys that match, the most specific one wins (see compare).
//
// kubelet offers every matching credential in turn; a check uses only the
// most specific one, which is the one kubelet tries first.
type dockerKeyring struct {
	entries []*authEntry // most specific first
}

// authEntry is one auths key, parsed, with its credentials.
type authEntry struct {
	key       string   // as written in the file, for a stable order only
	labels    []string // host labels, each a glob, docker hub canonical
	port      string
	path      []string // repository path segments the key is scoped to
	wildcards int      // labels holding a glob
	creds     *Credentials
}

// parseAuthKey parses an auths key: [scheme://]host[:port][/path].
func parseAuthKey(key string) (*authEntry, error) {
	s := strings.TrimSpace(key)
	if !strings.HasPrefix(s, "https://") && !strings.HasPrefix(s, "http://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("not a server address: %w", err)
	}
	host, port := splitHostPort(u.Host)
	if host == "" {
		return nil, fmt.Errorf("no host")
	}
	p := u.Path
	if strings.HasPrefix(p, "/v1/") || strings.HasPrefix(p, "/v2/") || p == "/v1" || p == "/v2" {
		p = p[3:]
	}
	e := &authEntry{key: key, port: port, path: pathSegments(p)}
	e.labels = strings.Split(canonicalHubHost(host), ".")
	for _, l := range e.labels {
		if _, err := path.Match(l, ""); err != nil {
			return nil, fmt.Errorf("host label %q: %w", l, err)
		}
		if strings.ContainsAny(l, `*?[\`) {
			e.wildcards++
		}
	}
	return e, nil
}

// compare orders entries most specific first: a longer repository path,
// then fewer glob labels (a named host before a wildcard one), then the
// longer key; equal ones by their key as written, so the choice between two
// spellings of one server never depends on map order.
func (e *authEntry) compare(o *authEntry) int {
	return cmp.Or(
		cmp.Compare(len(o.path), len(e.path)),
		cmp.Compare(e.wildcards, o.wildcards),
		cmp.Compare(len(o.key), len(e.key)),
		strings.Compare(e.key, o.key),
	)
}

// matches reports whether the entry is for repository on host (already
// split and canonical).
func (e *authEntry) matches(labels []string, port string, repo []string) bool {
	if port != e.port || len(labels) != len(e.labels) || len(repo) < len(e.path) {
		return false
	}
	for i, pattern := range e.labels {
		if ok, _ := path.Match(pattern, labels[i]); !ok {
			return false
		}
	}
	return slices.Equal(e.path, repo[:len(e.path)])
}

// lookup returns the most specific credentials for repository on host, nil
// when no key matches (anonymous).
func (k *dockerKeyring) lookup(host, repository string) *Credentials {
	h, port := splitHostPort(host)
	labels := strings.Split(canonicalHubHost(h), ".")
	repo := pathSegments(repository)
	for _, e := range k.entries {
		if e.matches(labels, port, repo) {
			return e.creds
		}
	}
	return nil
}

// splitHostPort splits host[:port], lower-casing the host (DNS names are
// case-insensitive); an IPv6 literal keeps its brackets off.
func splitHostPort(s string) (host, port string) {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		h, p = strings.Trim(s, "[]"), ""
	}
	return strings.ToLower(h), p
}

// pathSegments splits a repository path into its non-empty segments.
func pathSegments(p string) []string {
	return strings.FieldsFunc(p, func(r rune) bool { return r == '/' })
}

// canonicalHubHost maps docker hub's spellings of its host, in auths keys
// and as the host contacted for docker.io, to one.
func canonicalHubHost(host string) string {
	switch host {
	case "index.docker.io", "registry-1.docker.io":
		return "docker.io"
	}
	return host
}
