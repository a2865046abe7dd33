package registry

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
)

func TestCredentialsFromCRI(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name                                                    string
		host, user, pass, auth, server, identity, registryToken string
		want                                                    *Credentials
	}{
		{name: "nothing is anonymous", host: "r.example", want: nil},
		{name: "username and password", host: "r.example", user: "u", pass: "p", want: &Credentials{Username: "u", Password: "p"}},
		{name: "username wins over auth", host: "r.example", user: "u", pass: "p", auth: b64("x:y"), want: &Credentials{Username: "u", Password: "p"}},
		{name: "identity token before auth", host: "r.example", identity: "tok", auth: b64("x:y"), want: &Credentials{IdentityToken: "tok"}},
		{name: "auth decoded", host: "r.example", auth: b64("x:y:z"), want: &Credentials{Username: "x", Password: "y:z"}},
		{name: "auth NUL padding trimmed", host: "r.example", auth: b64("x:y\x00\x00"), want: &Credentials{Username: "x", Password: "y"}},
		{name: "auth without colon", host: "r.example", auth: b64("xy"), want: nil},
		{name: "auth not base64", host: "r.example", auth: "!!!", want: nil},
		{name: "registry token last", host: "r.example", registryToken: "bearer", want: &Credentials{RegistryToken: "bearer"}},
		{name: "server address matches", host: "r.example:5000", user: "u", server: "https://r.example:5000", want: &Credentials{Username: "u"}},
		{name: "server address other host", host: "r.example", user: "u", server: "https://other.example", want: nil},
		{name: "server address without scheme has no host (as in containerd)", host: "r.example", user: "u", server: "r.example", want: nil},
		{name: "server address unparsable", host: "r.example", user: "u", server: "r.example:5000", want: nil},
		{name: "docker.io compared as containerd's host", host: "docker.io", user: "u", server: "https://registry-1.docker.io", want: &Credentials{Username: "u"}},
		{name: "docker hub index address does not match (as in containerd)", host: "docker.io", user: "u", server: "https://index.docker.io/v1/", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := CredentialsFromCRI(tt.host, tt.user, tt.pass, tt.auth, tt.server, tt.identity, tt.registryToken)
			if (got == nil) != (tt.want == nil) || got != nil && *got != *tt.want {
				t.Fatalf("got %#v, want %#v", deref(got), deref(tt.want))
			}
		})
	}
}

func deref(c *Credentials) any {
	if c == nil {
		return nil
	}
	return *c
}

func TestCredentialsNeverPrinted(t *testing.T) {
	c := &Credentials{Username: "alice", Password: "s3cret", IdentityToken: "idtok", RegistryToken: "regtok"}
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, c, c, c)} {
		for _, secret := range []string{"s3cret", "idtok", "regtok"} {
			if strings.Contains(s, secret) {
				t.Fatalf("%q printed in %q", secret, s)
			}
		}
	}
}

func FuzzCredentialsFromCRI(f *testing.F) {
	f.Add("r.example", "u", "p", "", "", "", "")
	f.Add("r.example", "", "", "dTpw", "https://r.example", "", "")
	f.Add("docker.io", "", "", "", "", "id", "")
	f.Add("r.example", "", "", "", "://bad", "", "tok")
	f.Fuzz(func(t *testing.T, host, user, pass, auth, server, identity, token string) {
		got := CredentialsFromCRI(host, user, pass, auth, server, identity, token)
		if got == nil {
			return
		}
		if got.empty() && user == "" {
			t.Fatalf("non-nil but empty credentials %#v", *got)
		}
		set := 0
		for _, v := range []string{got.Username + got.Password, got.IdentityToken, got.RegistryToken} {
			if v != "" {
				set++
			}
		}
		if set > 1 {
			t.Fatalf("more than one kind of credential: %#v", *got)
		}
		if user != "" && (got.Username != user || got.Password != pass) {
			t.Fatalf("username given but not used: %#v", *got)
		}
	})
}
