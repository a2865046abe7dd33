package registry

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

// maxDockerConfigBytes bounds a credentials file: it is a handful of hosts.
const maxDockerConfigBytes = 1 << 20

// LoadDockerConfig reads the "auths" of a docker config.json — the format of
// a kubernetes.io/dockerconfigjson Secret — and returns the credentials it
// holds per registry host. Errors never quote the file's content.
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
		return nil, fmt.Errorf("registry credentials %s: not a docker config.json", path)
	}
	byHost := map[string]*Credentials{}
	for server, a := range doc.Auths {
		c := &Credentials{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf("registry credentials %s: auth for %s is not base64", path, server)
			}
			u, p, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, fmt.Errorf("registry credentials %s: auth for %s is not user:password", path, server)
			}
			c.Username, c.Password = u, p
		}
		byHost[dockerConfigHost(server)] = c
	}
	return func(host string) *Credentials { return byHost[dockerConfigHost(host)] }, nil
}

// dockerConfigHost maps the spellings docker config keys and endpoints use
// for a host ("https://index.docker.io/v1/", "registry-1.docker.io") to one.
func dockerConfigHost(s string) string {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "https://"), "http://")
	s, _, _ = strings.Cut(s, "/")
	switch s {
	case "index.docker.io", "registry-1.docker.io":
		return "docker.io"
	}
	return s
}
