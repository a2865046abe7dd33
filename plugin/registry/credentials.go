package registry

import (
	"encoding/base64"
	"net/url"
	"strings"
)

// Credentials are the registry credentials of one pull (from kubelet's
// PullImageRequest.auth). They live only as long as the request that carried
// them: never logged, cached or persisted. String and GoString redact them so
// an accidental %v or slog attribute cannot leak them.
type Credentials struct {
	Username      string
	Password      string
	IdentityToken string // OAuth2 refresh token, exchanged at the token endpoint
	RegistryToken string // bearer token sent as-is
}

func (c *Credentials) String() string {
	if c == nil {
		return "<anonymous>"
	}
	return "<credentials redacted>"
}

// GoString keeps %#v from printing the fields.
func (c *Credentials) GoString() string { return c.String() }

// empty reports whether c carries nothing usable (anonymous access).
func (c *Credentials) empty() bool {
	return c == nil || (c.Username == "" && c.Password == "" && c.IdentityToken == "" && c.RegistryToken == "")
}

// dockerHubHost is the host containerd actually talks to for docker.io, and
// therefore the host it compares a server address against.
const dockerHubHost = "registry-1.docker.io"

// CredentialsFromCRI maps the fields of a CRI AuthConfig to Credentials the
// way containerd's CRI plugin does (ParseAuth), so a pull and its
// verification authenticate identically:
//
//   - a non-empty serverAddress is parsed as a URL and its host must equal
//     the registry host, else the credentials are not for this registry
//     (nil). "docker.io" is compared as containerd's "registry-1.docker.io";
//   - username (with password) wins, then identityToken, then auth
//     (base64 "user:pass", trailing NULs trimmed from the password);
//   - registryToken is used only when nothing else is set (containerd ignores
//     it; kubelet only sets it for registries that issue bearer tokens);
//   - nothing set, or an undecodable auth, yields nil: anonymous access.
//     (containerd fails such a pull outright, so nothing is admitted that
//     containerd would pull differently.)
func CredentialsFromCRI(host, username, password, auth, serverAddress, identityToken, registryToken string) *Credentials {
	if host == "docker.io" {
		host = dockerHubHost
	}
	if serverAddress != "" {
		u, err := url.Parse(serverAddress)
		if err != nil || u.Host != host {
			return nil
		}
	}
	switch {
	case username != "":
		return &Credentials{Username: username, Password: password}
	case identityToken != "":
		return &Credentials{IdentityToken: identityToken}
	case auth != "":
		decoded, err := base64.StdEncoding.DecodeString(auth)
		if err != nil {
			return nil
		}
		user, pass, ok := strings.Cut(string(decoded), ":")
		if !ok {
			return nil
		}
		return &Credentials{Username: user, Password: strings.Trim(pass, "\x00")}
	case registryToken != "":
		return &Credentials{RegistryToken: registryToken}
	}
	return nil
}
