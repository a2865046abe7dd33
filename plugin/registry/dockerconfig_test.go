package registry

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeDockerConfig writes body as a config.json and returns its path.
func writeDockerConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// authsFor is a config.json giving each auths key the credentials of its
// user, whose password is "pw-" and the user's name.
func authsFor(t *testing.T, users map[string]string) string {
	t.Helper()
	auths := map[string]map[string]string{}
	for key, user := range users {
		auths[key] = map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":pw-" + user))}
	}
	b, err := json.Marshal(map[string]any{"auths": auths})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestLoadDockerConfigMatchesLikeKubelet(t *testing.T) {
	tests := []struct {
		name  string
		keys  map[string]string // auths key -> user
		host  string            // as a Repository asks: the endpoint's host
		repo  string
		want  string // user, "" for no credentials
		notes string
	}{
		// One host, keys scoped to repositories.
		{name: "team-a's key for team-a", keys: map[string]string{"registry.io/team-a": "a", "registry.io/team-b": "b", "registry.io": "host"}, host: "registry.io", repo: "team-a/app", want: "a"},
		{name: "team-b's key for team-b", keys: map[string]string{"registry.io/team-a": "a", "registry.io/team-b": "b", "registry.io": "host"}, host: "registry.io", repo: "team-b/sub/app", want: "b"},
		{name: "host key for another team", keys: map[string]string{"registry.io/team-a": "a", "registry.io/team-b": "b", "registry.io": "host"}, host: "registry.io", repo: "team-c/app", want: "host"},
		{name: "path key for exactly its repository", keys: map[string]string{"registry.io/team-a/app": "app", "registry.io": "host"}, host: "registry.io", repo: "team-a/app", want: "app"},
		{name: "path key only, other repository", keys: map[string]string{"registry.io/team-a": "a"}, host: "registry.io", repo: "team-b/app", want: ""},
		{name: "segment boundary", keys: map[string]string{"registry.io/team": "team"}, host: "registry.io", repo: "teamx/app", want: ""},
		{name: "segment boundary falls back to host", keys: map[string]string{"registry.io/team": "team", "registry.io": "host"}, host: "registry.io", repo: "teamx/app", want: "host"},
		{name: "longest prefix wins", keys: map[string]string{"registry.io/a": "a", "registry.io/a/b": "ab", "registry.io/a/b/c": "abc"}, host: "registry.io", repo: "a/b/app", want: "ab"},
		{name: "trailing slash on a path key", keys: map[string]string{"registry.io/team-a/": "a"}, host: "registry.io", repo: "team-a/app", want: "a"},

		// Schemes and the API root.
		{name: "https scheme", keys: map[string]string{"https://registry.io": "s"}, host: "registry.io", repo: "app", want: "s"},
		{name: "http scheme", keys: map[string]string{"http://registry.io": "s"}, host: "registry.io", repo: "app", want: "s"},
		{name: "v1 root", keys: map[string]string{"https://registry.io/v1/": "s"}, host: "registry.io", repo: "app", want: "s"},
		{name: "v2 root", keys: map[string]string{"https://registry.io/v2/": "s"}, host: "registry.io", repo: "app", want: "s"},
		{name: "v2 root with a path", keys: map[string]string{"https://registry.io/v2/team-a": "a", "registry.io": "host"}, host: "registry.io", repo: "team-a/app", want: "a"},
		{name: "scheme and path", keys: map[string]string{"https://registry.io/team-a": "a", "registry.io": "host"}, host: "registry.io", repo: "team-a/app", want: "a"},

		// Ports.
		{name: "port must match", keys: map[string]string{"registry.io:5000": "p"}, host: "registry.io", repo: "app", want: ""},
		{name: "port matches", keys: map[string]string{"registry.io:5000": "p", "registry.io": "host"}, host: "registry.io:5000", repo: "app", want: "p"},
		{name: "no port in the key", keys: map[string]string{"registry.io": "host"}, host: "registry.io:5000", repo: "app", want: ""},
		{name: "loopback with port", keys: map[string]string{"127.0.0.1:5000": "l"}, host: "127.0.0.1:5000", repo: "app", want: "l"},
		{name: "ipv6 with port", keys: map[string]string{"[::1]:5000": "v6"}, host: "[::1]:5000", repo: "app", want: "v6"},

		// Wildcard hosts.
		{name: "wildcard label", keys: map[string]string{"*.example.com": "w"}, host: "eu.example.com", repo: "app", want: "w"},
		{name: "wildcard does not match the apex", keys: map[string]string{"*.example.com": "w"}, host: "example.com", repo: "app", want: ""},
		{name: "wildcard is one label", keys: map[string]string{"*.example.com": "w"}, host: "a.eu.example.com", repo: "app", want: ""},
		{name: "two wildcard labels", keys: map[string]string{"*.*.example.com": "ww"}, host: "a.eu.example.com", repo: "app", want: "ww"},
		{name: "glob inside a label", keys: map[string]string{"reg-*.example.com": "g"}, host: "reg-eu.example.com", repo: "app", want: "g"},
		{name: "wildcard with port", keys: map[string]string{"*.example.com:5000": "wp"}, host: "eu.example.com", repo: "app", want: ""},
		{name: "named host before wildcard", keys: map[string]string{"*.example.com": "w", "eu.example.com": "named"}, host: "eu.example.com", repo: "app", want: "named"},
		{name: "wildcard with a path before named host", keys: map[string]string{"*.example.com/team-a": "wa", "eu.example.com": "named"}, host: "eu.example.com", repo: "team-a/app", want: "wa"},
		{name: "one wildcard before two", keys: map[string]string{"*.*.example.com": "ww", "*.eu.example.com": "w"}, host: "a.eu.example.com", repo: "app", want: "w"},
		{name: "host case", keys: map[string]string{"Registry.IO": "c"}, host: "registry.io", repo: "app", want: "c"},

		// docker hub's spellings.
		{name: "hub v1 key, hub host", keys: map[string]string{"https://index.docker.io/v1/": "hub"}, host: "registry-1.docker.io", repo: "library/nginx", want: "hub"},
		{name: "hub index key, docker.io", keys: map[string]string{"index.docker.io": "hub"}, host: "docker.io", repo: "library/nginx", want: "hub"},
		{name: "hub registry-1 key, index host", keys: map[string]string{"registry-1.docker.io": "hub"}, host: "index.docker.io", repo: "library/nginx", want: "hub"},
		{name: "hub docker.io key", keys: map[string]string{"docker.io": "hub"}, host: "registry-1.docker.io", repo: "library/nginx", want: "hub"},
		{name: "hub path key", keys: map[string]string{"docker.io/myorg": "org", "https://index.docker.io/v1/": "hub"}, host: "registry-1.docker.io", repo: "myorg/app", want: "org"},
		{name: "hub v1 path key", keys: map[string]string{"https://index.docker.io/v1/myorg": "org", "docker.io": "hub"}, host: "registry-1.docker.io", repo: "myorg/app", want: "org"},
		{name: "hub path key, other org", keys: map[string]string{"docker.io/myorg": "org", "https://index.docker.io/v1/": "hub"}, host: "registry-1.docker.io", repo: "library/nginx", want: "hub"},
		{name: "hub key is not another host", keys: map[string]string{"https://index.docker.io/v1/": "hub"}, host: "quay.io", repo: "library/nginx", want: ""},
		{name: "two hub spellings pick one stably", keys: map[string]string{"docker.io": "short", "https://index.docker.io/v1/": "long"}, host: "registry-1.docker.io", repo: "library/nginx", want: "long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Map order is random: ask often enough that a choice made by
			// it would show.
			for range 20 {
				creds, err := LoadDockerConfig(writeDockerConfig(t, authsFor(t, tt.keys)))
				if err != nil {
					t.Fatal(err)
				}
				c := creds(tt.host, tt.repo)
				switch {
				case tt.want == "" && c != nil:
					t.Fatalf("%s %s: got %s's credentials, want none", tt.host, tt.repo, c.Username)
				case tt.want != "" && (c == nil || c.Username != tt.want || c.Password != "pw-"+tt.want):
					got := "none"
					if c != nil {
						got = c.Username
					}
					t.Fatalf("%s %s: got %s's credentials, want %s's", tt.host, tt.repo, got, tt.want)
				}
			}
		})
	}
}

func TestLoadDockerConfigFields(t *testing.T) {
	creds, err := LoadDockerConfig(writeDockerConfig(t, `{"auths":{
		"a.io":{"auth":"`+base64.StdEncoding.EncodeToString([]byte("bob:pa:ss"))+`"},
		"b.io":{"username":"u","password":"p"},
		"c.io":{"identitytoken":"refresh"},
		"d.io":{"registrytoken":"bearer"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host string
		want Credentials
	}{
		{"a.io", Credentials{Username: "bob", Password: "pa:ss"}},
		{"b.io", Credentials{Username: "u", Password: "p"}},
		{"c.io", Credentials{IdentityToken: "refresh"}},
		{"d.io", Credentials{RegistryToken: "bearer"}},
	}
	for _, tt := range tests {
		if c := creds(tt.host, "app"); c == nil || *c != tt.want {
			t.Errorf("%s: got %v", tt.host, c)
		}
	}
}

func TestLoadDockerConfigErrorsKeepSecrets(t *testing.T) {
	const secret = "s3cret-value"
	tests := []struct {
		name string
		body string
	}{
		{"not json", `{"auths":{"h":{"password":"` + secret + `"`},
		{"wrong type", `{"auths":{"h":{"password":["` + secret + `"]}}}`},
		{"bad base64", `{"auths":{"h":{"auth":"$$$` + secret + `"}}}`},
		{"no colon", `{"auths":{"h":{"auth":"` + base64.StdEncoding.EncodeToString([]byte(secret)) + `"}}}`},
		{"bad host glob", `{"auths":{"[.example.com":{"username":"u","password":"` + secret + `"}}}`},
		{"no host", `{"auths":{"https:///team-a":{"username":"u","password":"` + secret + `"}}}`},
		{"oversized", `{"auths":{"h":{"password":"` + secret + strings.Repeat(" ", maxDockerConfigBytes) + `"}}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadDockerConfig(writeDockerConfig(t, tt.body))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, s := range []string{secret, base64.StdEncoding.EncodeToString([]byte(secret))} {
				if strings.Contains(err.Error(), s) || strings.Contains(fmt.Sprintf("%+v %#v", err, err), s) {
					t.Fatalf("error quotes the secret: %v", err)
				}
			}
		})
	}
	if _, err := LoadDockerConfig(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("missing file accepted")
	}
}

// The credentials a lookup returns print redacted however they are
// formatted, so a log line naming them cannot leak the file's secrets.
func TestDockerConfigCredentialsRedacted(t *testing.T) {
	creds, err := LoadDockerConfig(writeDockerConfig(t, `{"auths":{"registry.io/team-a":{"username":"alice","password":"pw-secret","identitytoken":"tok-secret"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	c := creds("registry.io", "team-a/app")
	if c == nil {
		t.Fatal("no credentials")
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(verb, c)
		if strings.Contains(out, "pw-secret") || strings.Contains(out, "tok-secret") {
			t.Errorf("%s prints %q", verb, out)
		}
	}
}

func FuzzParseDockerConfig(f *testing.F) {
	f.Add([]byte(`{"auths":{"https://index.docker.io/v1/":{"auth":"Ym9iOnBhc3M="},"registry.io/team-a":{"username":"u","password":"p"},"*.example.com:5000":{"registrytoken":"t"}}}`))
	f.Add([]byte(`{"auths":{"[::1]:5000/v2/x":{"identitytoken":"t"}}}`))
	f.Add([]byte(`{"auths":{"[":{}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := parseDockerConfig(data)
		if err != nil {
			return
		}
		for _, probe := range [][2]string{{"registry.io", "team-a/app"}, {"registry-1.docker.io", "library/nginx"}, {"a.example.com:5000", "x"}, {"[::1]:5000", "x/y"}} {
			if c := k.lookup(probe[0], probe[1]); c != nil && fmt.Sprintf("%v %#v", c, c) != "<credentials redacted> <credentials redacted>" {
				t.Fatalf("credentials print as %v", c)
			}
		}
	})
}
