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

var tableHeader = regexp.MustCompile(`^\s*\[`)

// headerRE matches the line opening [table].
func headerRE(table string) *regexp.Regexp {
	return regexp.MustCompile(`^\s*\[\s*` + regexp.QuoteMeta(table) + `\s*\]\s*(#.*)?$`)
}

// keyRE matches the line setting key.
func keyRE(key string) *regexp.Regexp {
	return regexp.MustCompile(`^\s*` + regexp.QuoteMeta(key) + `\s*=`)
}

// Node is what the installer learnt about the node. It is written into
// every config.toml the installer or the syncer puts on the node, whatever
// the ConfigMap says: the runtime endpoint, containerd's NRI socket and
// config, and whether containerd can require pullguard are facts of the
// node, not of the cluster-wide ConfigMap.
type Node struct {
	// Upstream is [server] upstream: the runtime endpoint kubelet uses.
	Upstream string
	// NRIMode is [nri] mode (enforce or pull-only); "" leaves the
	// ConfigMap's.
	NRIMode string
	// NRI fills the rest of [nri] in enforce mode; nil leaves the
	// ConfigMap's.
	NRI *NodeNRI
}

// NodeNRI is containerd's side of the gate on this node.
type NodeNRI struct {
	Socket           string `json:"socket"`           // containerd's NRI socket_path
	ContainerdConfig string `json:"containerdConfig"` // containerd's main config file
	// SandboxImage is containerd's configured sandbox image; "" when its
	// config names none, and then pullguard decides the images containerd
	// labels pinned, which is how it marks the sandbox image it runs.
	SandboxImage string `json:"sandboxImage"`
}

type setting struct{ table, key, value string }

func (n Node) settings() []setting {
	var out []setting
	if n.Upstream != "" {
		out = append(out, setting{"server", "upstream", n.Upstream})
	}
	if n.NRIMode != "" {
		out = append(out, setting{"nri", "mode", n.NRIMode})
	}
	if n.NRI != nil {
		out = append(out,
			setting{"nri", "socket", n.NRI.Socket},
			setting{"nri", "containerd_config", n.NRI.ContainerdConfig},
			setting{"nri", "sandbox_image", n.NRI.SandboxImage})
	}
	return out
}

// SetNode writes the node's settings into a config.toml, each as a one-line
// edit that leaves every other line as it was (see SetUpstream).
func SetNode(data []byte, n Node) ([]byte, error) {
	for _, s := range n.settings() {
		var err error
		if data, err = setKey(data, s.table, s.key, s.value); err != nil {
			return nil, err
		}
	}
	return data, nil
}

// SetUpstream rewrites [server].upstream in a config.toml to endpoint,
// leaving every other line as it was. The node's upstream is a fact of the
// node (the runtime endpoint kubelet uses), so it overrides what the
// ConfigMap says. The result is decoded again to prove the edit landed.
func SetUpstream(data []byte, endpoint string) ([]byte, error) {
	return setKey(data, "server", "upstream", endpoint)
}

// tableKey decodes [table].key, a string, and whether it is set.
func tableKey(data []byte, table, key string) (string, bool, error) {
	// Decoded into a map: struct decoding matches keys case-insensitively,
	// and "upstreAm" must not count as the upstream.
	var m map[string]any
	if _, err := toml.Decode(string(data), &m); err != nil {
		return "", false, fmt.Errorf("parse config.toml: %w", err)
	}
	t, ok := m[table]
	if !ok {
		return "", false, nil
	}
	tbl, ok := t.(map[string]any)
	if !ok {
		return "", false, fmt.Errorf("parse config.toml: %s is not a table", table)
	}
	v, ok := tbl[key]
	if !ok {
		return "", false, nil
	}
	str, ok := v.(string)
	if !ok {
		return "", false, fmt.Errorf("parse config.toml: [%s].%s is not a string", table, key)
	}
	return str, true, nil
}

// setKey sets [table].key to value with a line edit: the key's line in the
// table is replaced (the first one; later duplicates, which TOML forbids,
// are dropped), or the key is added under the table's header, or the table
// is added at the end.
func setKey(data []byte, table, key, value string) ([]byte, error) {
	if _, _, err := tableKey(data, table, key); err != nil {
		return nil, err
	}
	line := key + " = " + strconv.Quote(value)
	lines := strings.Split(string(data), "\n")
	header, keyLine := headerRE(table), keyRE(key)
	at, end := -1, len(lines)
	for i, l := range lines {
		if at < 0 {
			if header.MatchString(l) {
				at = i
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
	case at < 0:
		if len(lines) > 0 && lines[len(lines)-1] == "" {
			lines = lines[:len(lines)-1]
		}
		out = append(lines, "", "["+table+"]", line, "")
	default:
		replaced := false
		out = append(out, lines[:at+1]...)
		for _, l := range lines[at+1 : end] {
			if keyLine.MatchString(l) {
				if !replaced {
					out = append(out, line)
					replaced = true
				}
				continue
			}
			out = append(out, l)
		}
		if !replaced {
			out = append(lines[:at+1:at+1], line)
			out = append(out, lines[at+1:]...)
		} else {
			out = append(out, lines[end:]...)
		}
	}
	result := []byte(strings.Join(out, "\n"))
	got, ok, err := tableKey(result, table, key)
	if err != nil {
		return nil, fmt.Errorf("set [%s] %s: edited config no longer parses (multi-line value in [%s]?): %w", table, key, table, err)
	}
	if !ok || got != value {
		return nil, fmt.Errorf("set [%s] %s: could not rewrite it (found %q after the edit); write it as a plain `%s = \"...\"` line", table, key, got, key)
	}
	return result, nil
}
