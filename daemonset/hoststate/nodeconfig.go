package hoststate

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// serverSection is the part of config.toml the installer needs before the
// daemon runs: where it will listen and where it forwards to.
type serverSection struct {
	Server struct {
		Socket   string
		Upstream string
	}
}

func decodeServer(data []byte) (serverSection, error) {
	var s serverSection
	// Decoded into a map: struct decoding matches keys case-insensitively,
	// and "upstreAm" must not count as the upstream. Only [server] is read
	// here; the full schema is checked by the config package.
	var m map[string]any
	if _, err := toml.Decode(string(data), &m); err != nil {
		return s, fmt.Errorf("parse config.toml: %w", err)
	}
	srv, ok := m["server"]
	if !ok {
		return s, nil
	}
	tbl, ok := srv.(map[string]any)
	if !ok {
		return s, fmt.Errorf("parse config.toml: server is not a table")
	}
	for key, dst := range map[string]*string{"socket": &s.Server.Socket, "upstream": &s.Server.Upstream} {
		if v, ok := tbl[key]; ok {
			str, ok := v.(string)
			if !ok {
				return s, fmt.Errorf("parse config.toml: [server].%s is not a string", key)
			}
			*dst = str
		}
	}
	return s, nil
}

// ServerSocket returns the host path of the socket the config makes pullguard
// listen on.
func ServerSocket(data []byte) (string, error) {
	s, err := decodeServer(data)
	if err != nil {
		return "", err
	}
	sock := strings.TrimPrefix(s.Server.Socket, "unix://")
	if sock == "" {
		sock = DefaultSocket
	}
	if !strings.HasPrefix(sock, "/") {
		return "", fmt.Errorf("config.toml: [server].socket %q must be an absolute path", s.Server.Socket)
	}
	return sock, nil
}

var (
	tableHeader  = regexp.MustCompile(`^\s*\[`)
	serverHeader = regexp.MustCompile(`^\s*\[\s*server\s*\]\s*(#.*)?$`)
	upstreamLine = regexp.MustCompile(`^\s*upstream\s*=`)
)

// SetUpstream rewrites [server].upstream in a config.toml to endpoint,
// leaving every other line as it was. The node's upstream is a fact of the
// node (whatever kubelet used before pullguard), so it overrides what the
// ConfigMap says. The result is decoded again to prove the edit landed.
func SetUpstream(data []byte, endpoint string) ([]byte, error) {
	if _, err := decodeServer(data); err != nil {
		return nil, err
	}
	line := "upstream = " + strconv.Quote(endpoint)
	lines := strings.Split(string(data), "\n")
	serverAt, end := -1, len(lines)
	for i, l := range lines {
		if serverAt < 0 {
			if serverHeader.MatchString(l) {
				serverAt = i
			}
			continue
		}
		if tableHeader.MatchString(l) {
			end = i
			break
		}
	}
	var out []string
	switch {
	case serverAt < 0:
		out = append(lines, "", "[server]", line, "")
		if len(lines) > 0 && lines[len(lines)-1] == "" {
			out = append(lines[:len(lines)-1], "", "[server]", line, "")
		}
	default:
		replaced := false
		out = append(out, lines[:serverAt+1]...)
		for _, l := range lines[serverAt+1 : end] {
			if upstreamLine.MatchString(l) {
				if !replaced {
					out = append(out, line)
					replaced = true
				}
				continue
			}
			out = append(out, l)
		}
		if !replaced {
			out = append(lines[:serverAt+1:serverAt+1], line)
			out = append(out, lines[serverAt+1:]...)
		} else {
			out = append(out, lines[end:]...)
		}
	}
	result := []byte(strings.Join(out, "\n"))
	got, err := decodeServer(result)
	if err != nil {
		return nil, fmt.Errorf("set upstream: edited config no longer parses (multi-line value in [server]?): %w", err)
	}
	if got.Server.Upstream != endpoint {
		return nil, fmt.Errorf("set upstream: could not rewrite [server].upstream (found %q after the edit); write it as a plain `upstream = \"...\"` line", got.Server.Upstream)
	}
	return result, nil
}
