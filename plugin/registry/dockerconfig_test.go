package registry

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadDockerConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "config.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	auth := base64.StdEncoding.EncodeToString([]byte("bob:pa:ss"))
	creds, err := LoadDockerConfig(write(`{"auths":{"https://index.docker.io/v1/":{"auth":"` + auth + `"},"127.0.0.1:5000":{"username":"u","password":"p"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"docker.io", "registry-1.docker.io", "index.docker.io"} {
		if c := creds(host); c == nil || c.Username != "bob" || c.Password != "pa:ss" {
			t.Errorf("%s: %#v", host, c)
		}
	}
	if c := creds("127.0.0.1:5000"); c == nil || c.Password != "p" {
		t.Errorf("loopback: %#v", c)
	}
	if c := creds("elsewhere.example.com"); c != nil {
		t.Errorf("unknown host got %#v", c)
	}
	for name, body := range map[string]string{
		"not json":   `{"auths":`,
		"bad base64": `{"auths":{"h":{"auth":"$$$ secret-ish"}}}`,
		"no colon":   `{"auths":{"h":{"auth":"` + base64.StdEncoding.EncodeToString([]byte("nocolon")) + `"}}}`,
	} {
		_, err := LoadDockerConfig(write(body))
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "secret-ish") {
			t.Errorf("%s: error quotes the file: %v", name, err)
		}
	}
	if _, err := LoadDockerConfig(write(strings.Repeat(" ", maxDockerConfigBytes+1))); err == nil {
		t.Error("oversized file accepted")
	}
}
