package main

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckCredentialsFromFlags(t *testing.T) {
	creds, err := checkCredentials("alice", true, "", strings.NewReader("s3cret\n"))
	if err != nil {
		t.Fatal(err)
	}
	c := creds("registry.example.com", "app")
	if c == nil || c.Username != "alice" || c.Password != "s3cret" {
		t.Fatalf("credentials %#v", c)
	}
	if strings.Contains(c.String(), "s3cret") {
		t.Fatal("credentials print their password")
	}
	for _, bad := range [][3]string{{"", "stdin", ""}, {"alice", "", "cfg.json"}} {
		if _, err := checkCredentials(bad[0], bad[1] != "", bad[2], strings.NewReader("")); err == nil {
			t.Errorf("flags %q accepted", bad)
		}
	}
}

func TestCheckCredentialsFromDockerConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	auth := base64.StdEncoding.EncodeToString([]byte("bob:pa:ss"))
	doc := `{"auths":{"https://index.docker.io/v1/":{"auth":"` + auth + `"},"127.0.0.1:5000":{"username":"u","password":"p"},"127.0.0.1:5000/team-a":{"username":"a","password":"pa"}}}`
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	creds, err := checkCredentials("", false, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := creds("docker.io", "library/nginx"); c == nil || c.Username != "bob" || c.Password != "pa:ss" {
		t.Fatalf("docker.io credentials %#v", c)
	}
	if c := creds("127.0.0.1:5000", "team-b/app"); c == nil || c.Username != "u" {
		t.Fatalf("loopback registry credentials %#v", c)
	}
	if c := creds("127.0.0.1:5000", "team-a/app"); c == nil || c.Username != "a" {
		t.Fatalf("team-a's credentials on the loopback registry %#v", c)
	}
	if c := creds("other.example.com", "app"); c != nil {
		t.Fatalf("credentials for a host not in the file: %#v", c)
	}

	if err := os.WriteFile(path, []byte(`{"auths":{"x":{"auth":"not base64!"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := checkCredentials("", false, path, nil); err == nil || strings.Contains(err.Error(), "not base64!") {
		t.Fatalf("bad auth: err %v (must fail without quoting the secret)", err)
	}
}
