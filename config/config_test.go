package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullguard/pullguard/plugin/policy"
)

// writeCertDir creates dir holding one freshly generated self-signed certificate.
func writeCertDir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test", Organization: []string{"Example"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
}

// minimal is a config that validates on any machine once the trust store exists.
func minimal(trustStore string) string {
	return `
[policy]
dir = ""

[[policies]]
kind = "ClusterImagePolicy"
name = "default"
  [[policies.repositories]]
  name = "*"
  [policies.repositories.policy.trust]
  enabled = true
  signers = ["release"]

[[signers]]
name = "release"
trust_store = "` + trustStore + `"
identities = ["x509.subject: C=US, ST=WA, O=Example, CN=test"]
`
}

func TestDefaults(t *testing.T) {
	c, err := Parse(nil, "empty.toml")
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	if c.Server.Socket != "/run/pullguard/pullguard.sock" || c.Server.SocketFileMode() != 0o660 ||
		c.Server.Upstream != "unix:///run/containerd/containerd.sock" || c.Server.MaxMessageBytes != 16<<20 ||
		c.Decision.Timeout.Duration != 30*time.Second || c.Policy.DefaultMode != "enforce" ||
		c.VA.Unscanned != "deny" || !c.VA.RequireSignedReport || c.Cache.TTL.Duration != time.Hour ||
		c.Registry.MaxSignatures != 16 || c.Server.ShutdownTimeout != d.Server.ShutdownTimeout {
		t.Fatalf("defaults not applied: %+v", c)
	}
	if got := c.CacheFile(); got != "/var/lib/pullguard/facts.json" {
		t.Fatalf("cache file %q", got)
	}
	c.Policy.Dir = "" // the default directory does not exist here
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if got := c.Server.UpstreamPath(); got != "/run/containerd/containerd.sock" {
		t.Fatalf("upstream path %q", got)
	}
}

func TestParseValues(t *testing.T) {
	c, err := Parse([]byte(`
[server]
socket = "/tmp/pg.sock"
socket_mode = "0600"
shutdown_timeout = "5s"
[va]
max_report_age = "168h"
  [[va.allow]]
  id = "CVE-2023-0001"
  expires = "2027-01-31"
  namespaces = ["team-a"]
[registry]
plain_http = ["127.0.0.1:5000"]
[cache]
persist = false
`), "c.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Server.SocketFileMode() != 0o600 || c.Server.ShutdownTimeout.Duration != 5*time.Second ||
		c.VA.MaxReportAge.Duration != 168*time.Hour || c.Registry.PlainHTTP[0] != "127.0.0.1:5000" || c.CacheFile() != "" {
		t.Fatalf("%+v", c)
	}
	ex, err := c.VA.Exemptions()
	if err != nil || len(ex) != 1 || ex[0].ID != "CVE-2023-0001" || ex[0].Expires.Format(time.DateOnly) != "2027-01-31" || ex[0].Namespaces[0] != "team-a" {
		t.Fatalf("exemptions %+v", ex)
	}
	if c.Source != "c.toml" {
		t.Fatalf("source %q", c.Source)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ name, doc, want string }{
		{"unknown key", "[server]\nsockett = \"/x\"\n", `c.toml: unknown key "server.sockett"`},
		{"unknown table", "[servr]\nsocket = \"/x\"\n", `unknown key "servr"`},
		{"unknown top-level key", "listen = 1\n", `unknown key "listen"`},
		{"unknown key in inline policy", "[[policies]]\nkind = \"ClusterImagePolicy\"\nname = \"c\"\n[[policies.repositories]]\nname = \"*\"\n[policies.repositories.polcy.trust]\nenabled = true\n", `unknown key "policies.repositories.polcy.trust"`},
		{"unknown key in signer", "[[signers]]\nname = \"a\"\ntruststore = \"/x\"\n", `unknown key "signers.truststore"`},
		{"several unknown keys", "a = 1\nb = 2\n", `unknown keys ["a" "b"]`},
		{"syntax error", "[server]\nsocket = \"/x\n", "line 2"},
		{"type error", "\n[server]\nmax_message_bytes = \"big\"\n", "line 3"},
		{"bad duration", "[decision]\n\ntimeout = \"5 sec\"\n", `line 3`},
		{"duration as number", "[decision]\ntimeout = 5\n", "line 2"},
		{"bad date", "[[va.allow]]\nid = \"x\"\nexpires = \"tomorrow\"\n", `invalid date "tomorrow"`},
		{"duplicate key", "[log]\nlevel = \"info\"\nlevel = \"debug\"\n", "line 3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc), "c.toml")
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "c.toml: ") {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	store := filepath.Join(t.TempDir(), "release")
	writeCertDir(t, store)
	empty := t.TempDir()
	junk := t.TempDir()
	if err := os.WriteFile(filepath.Join(junk, "x.pem"), []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := minimal(store)
	tests := []struct{ name, extra, want string }{
		{"ok", "", ""},
		{"relative socket", "[server]\nsocket = \"pg.sock\"\n", "must be an absolute path"},
		{"long socket", "[server]\nsocket = \"/" + strings.Repeat("s", 107) + "\"\n", "longer than the 107"},
		{"socket 107 bytes is fine", "[server]\nsocket = \"/" + strings.Repeat("s", 106) + "\"\n", ""},
		{"world-accessible socket", "[server]\nsocket_mode = \"0666\"\n", "gives other users access"},
		{"bad socket mode", "[server]\nsocket_mode = \"rw\"\n", `invalid socket_mode "rw"`},
		{"tcp upstream", "[server]\nupstream = \"tcp://127.0.0.1:1\"\n", "only unix sockets"},
		{"upstream loops", "[server]\nsocket = \"/run/x.sock\"\nupstream = \"unix:///run/x.sock\"\n", "calls would loop"},
		{"bare upstream path", "[server]\nupstream = \"/run/containerd/containerd.sock\"\n", ""},
		{"tiny messages", "[server]\nmax_message_bytes = 10\n", "max_message_bytes 10"},
		{"zero shutdown", "[server]\nshutdown_timeout = \"0s\"\n", "shutdown_timeout 0s: must be positive"},
		{"negative timeout", "[decision]\ntimeout = \"-1s\"\n", "[decision] timeout -1s: must be positive"},
		{"huge timeout", "[decision]\ntimeout = \"1h\"\n", "longer than"},
		{"log level", "[log]\nlevel = \"verbose\"\n", `[log] level "verbose"`},
		{"log format", "[log]\nformat = \"xml\"\n", `[log] format "xml"`},
		{"metrics address", "[metrics]\naddress = \"9464\"\n", `[metrics] address "9464"`},
		{"default mode", "[policy]\ndefault_mode = \"warn\"\n", `default_mode "warn"`},
		{"va severity", "[va]\nmax_severity = \"severe\"\n", `unknown severity "severe"`},
		{"va unknown severity none", "[va]\nunknown_severity = \"none\"\n", `unknown_severity "none"`},
		{"va unscanned", "[va]\nunscanned = \"maybe\"\n", `[va] unscanned`},
		{"va scanner signer undefined", "[va]\nscanner_signers = [\"scanner\"]\n", `"scanner" is not defined in [[signers]]`},
		{"va allow without id", "[[va.allow]]\nexpires = \"2027-01-01\"\n", "[[va.allow]] #1: id is required"},
		{"registry host", "[registry]\nplain_http = [\"http://127.0.0.1:5000\"]\n", "plain_http"},
		{"registry ca file missing", "[registry]\nca_files = [\"/nonexistent/ca.pem\"]\n", "ca_files"},
		{"registry hosts_dir missing", "[registry]\nhosts_dir = \"/nonexistent/certs.d\"\n", "hosts_dir"},
		{"registry bound", "[registry]\nmax_signatures = 0\n", "max_signatures 0"},
		{"cache size", "[cache]\nsize = -1\n", "[cache] size -1"},
		{"duplicate signer", "[[signers]]\nname = \"release\"\ntrust_store = \"" + store + "\"\nidentities = [\"*\"]\n", "duplicate signer name"},
		{"bad signer name", "[[signers]]\nname = \"re lease\"\ntrust_store = \"" + store + "\"\nidentities = [\"*\"]\n", "name may only hold"},
		{"missing trust store", "[[signers]]\nname = \"b\"\ntrust_store = \"/nonexistent/store\"\nidentities = [\"*\"]\n", `"b": trust_store: stat /nonexistent/store`},
		{"empty trust store", "[[signers]]\nname = \"b\"\ntrust_store = \"" + empty + "\"\nidentities = [\"*\"]\n", ": no certificates"},
		{"junk trust store", "[[signers]]\nname = \"b\"\ntrust_store = \"" + junk + "\"\nidentities = [\"*\"]\n", "x.pem: "},
		{"no identities", "[[signers]]\nname = \"b\"\ntrust_store = \"" + store + "\"\n", "identities: at least one"},
		{"star with others", "[[signers]]\nname = \"b\"\ntrust_store = \"" + store + "\"\nidentities = [\"*\", \"x509.subject: CN=a\"]\n", "wildcard identity cannot be used in conjunction with other values"},
		{"bad identity", "[[signers]]\nname = \"b\"\ntrust_store = \"" + store + "\"\nidentities = [\"CN=a\"]\n", `"CN=a" missing separator`},
		{"identity without the RDNs notation requires", "[[signers]]\nname = \"b\"\ntrust_store = \"" + store + "\"\nidentities = [\"x509.subject: CN=a,O=Example\"]\n", "mandatory RDN attribute"},
		{"revocation", "[[signers]]\nname = \"b\"\ntrust_store = \"" + store + "\"\nidentities = [\"*\"]\nrevocation = \"lax\"\n", `revocation "lax"`},
		{"undefined signer in policy", "[[policies]]\nkind = \"ImagePolicy\"\nname = \"team\"\nnamespace = \"team-a\"\n[[policies.repositories]]\nname = \"quay.io/*\"\n[policies.repositories.policy.trust]\nenabled = true\nsigners = [\"qa\"]\n",
			`ImagePolicy team-a/team (c.toml#policies[1]): repositories[0] "quay.io/*": trust signer "qa" is not defined in [[signers]]`},
		{"invalid inline policy", "[[policies]]\nkind = \"ImagePolicy\"\nname = \"team\"\n", `c.toml#policies[1]: ImagePolicy "team": namespace is required`},
		{"duplicate policy", "[[policies]]\nkind = \"ClusterImagePolicy\"\nname = \"default\"\n", "duplicate policy"},
		{"missing policy dir", "[policy]\ndir = \"/nonexistent/policies\"\n", `dir /nonexistent/policies does not exist`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc := base + tc.extra
			if strings.HasPrefix(tc.extra, "[policy]") {
				doc = strings.Replace(base, "[policy]\ndir = \"\"\n", tc.extra, 1)
			}
			c, err := Parse([]byte(doc), "c.toml")
			if err != nil {
				t.Fatal(err)
			}
			err = c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestValidateReportsEverything(t *testing.T) {
	c, err := Parse([]byte("[log]\nlevel = \"loud\"\nformat = \"xml\"\n[policy]\ndir = \"\"\n"), "c.toml")
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	if err == nil || !strings.Contains(err.Error(), "level") || !strings.Contains(err.Error(), "format") {
		t.Fatalf("want both problems, got %v", err)
	}
}

func TestPoliciesInlineAndDir(t *testing.T) {
	root := t.TempDir()
	store := filepath.Join(root, "trust", "release")
	writeCertDir(t, store)
	pdir := filepath.Join(root, "policies")
	if err := os.Mkdir(pdir, 0o755); err != nil {
		t.Fatal(err)
	}
	yamlDoc := "apiVersion: pullguard.dev/v1beta1\nkind: ImagePolicy\nmetadata: {name: team, namespace: team-a}\nspec:\n  repositories:\n  - name: quay.io/*\n    policy: {trust: {enabled: true, signerSecrets: [{name: ghost}]}}\n"
	if err := os.WriteFile(filepath.Join(pdir, "team.yaml"), []byte(yamlDoc), 0o644); err != nil {
		t.Fatal(err)
	}
	cfgText := strings.Replace(minimal("trust/release"), `dir = ""`, `dir = "policies"`, 1)
	path := filepath.Join(root, "config.toml")
	if err := os.WriteFile(path, []byte(cfgText), 0o644); err != nil {
		t.Fatal(err)
	}
	// Relative paths resolve against the config's directory; the dir policy names a signer
	// that does not exist, which Load must report with the policy and rule.
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), `ImagePolicy team-a/team (`+filepath.Join(pdir, "team.yaml")+`): repositories[0] "quay.io/*": trust signer "ghost" is not defined`) {
		t.Fatalf("Load: %v", err)
	}
	if err := os.WriteFile(filepath.Join(pdir, "team.yaml"), []byte(strings.Replace(yamlDoc, "ghost", "release", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy.Dir != pdir || c.Signers[0].TrustStore != store || c.Signers[0].Revocation != RevocationStrict {
		t.Fatalf("relative paths not resolved: %q %q", c.Policy.Dir, c.Signers[0].TrustStore)
	}
	ps, err := c.Policies()
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].Source != path+"#policies[0]" || ps[1].Source != filepath.Join(pdir, "team.yaml") {
		t.Fatalf("policies %+v", ps)
	}
	set, err := policy.NewSet(ps, policy.Mode(c.Policy.DefaultMode))
	if err != nil {
		t.Fatal(err)
	}
	m, err := set.Match("team-a", "quay.io/x")
	if err != nil || m.Rule == nil || m.Rule.Checks.Trust.Signers[0] != "release" {
		t.Fatalf("match %+v %v", m, err)
	}
}

func TestLoadErrors(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "missing.toml")); err == nil {
		t.Fatal("missing file accepted")
	}
	path := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(path, []byte("[log]\nlevel = \"loud\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.HasPrefix(err.Error(), path+": ") {
		t.Fatalf("error %v does not name the file", err)
	}
}

func TestWithRoot(t *testing.T) {
	c, err := Parse([]byte(minimal("/etc/pullguard/truststore/release")+"[registry]\nca_files = [\"/etc/ssl/ca.pem\"]\n"), "c.toml")
	if err != nil {
		t.Fatal(err)
	}
	r := c.WithRoot("/host")
	if r.Signers[0].TrustStore != "/host/etc/pullguard/truststore/release" || r.Registry.CAFiles[0] != "/host/etc/ssl/ca.pem" ||
		r.Server.StateDir != "/host/var/lib/pullguard" || r.Server.Socket != c.Server.Socket || r.Policy.Dir != "" {
		t.Fatalf("rooted %+v", r)
	}
	if c.Signers[0].TrustStore != "/etc/pullguard/truststore/release" || c.Registry.CAFiles[0] != "/etc/ssl/ca.pem" {
		t.Fatal("WithRoot changed the original")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal("/tmp/store")))
	f.Add([]byte("[server]\nsocket = \"/x\"\nshutdown_timeout = \"5s\"\n[[va.allow]]\nid = \"x\"\nexpires = 2027-01-01\n"))
	f.Add([]byte("[cache]\nsize = 1\nttl = \"1h\"\n"))
	if b, err := os.ReadFile(filepath.Join("examples", "config.toml")); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "fuzz.toml")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.toml: ") {
				t.Fatalf("error %q does not name the source", err)
			}
			return
		}
		// Converting what parsed must not panic either; its errors are fine.
		c.Policy.Dir = ""
		_, _ = c.Policies()
		_ = c.Server.SocketFileMode()
	})
}

func TestWarnings(t *testing.T) {
	c, err := Parse([]byte(`
[policy]
dir = ""
default_mode = "audit"
[metrics]
address = "0.0.0.0:9464"
[registry]
plain_http = ["127.0.0.1:5000"]
insecure_skip_verify = ["registry.local"]
[[policies]]
kind = "ClusterImagePolicy"
name = "c"
  [[policies.repositories]]
  name = "*"
  [policies.repositories.policy.trust]
  enabled = true
  [policies.repositories.policy.va]
  enabled = true
  [[policies.repositories]]
  name = "quay.io/*"
  [policies.repositories.policy.va]
  enabled = true
  require_signed_report = false
`), "c.toml")
	if err != nil {
		t.Fatal(err)
	}
	w := strings.Join(c.Warnings(), "\n")
	for _, want := range []string{
		"default_mode is audit", "plain_http", "insecure_skip_verify", `"0.0.0.0:9464" is reachable`,
		`repositories[0] "*" requires trust but no [[signers]]`,
		`repositories[0] "*" requires a signed scan report but [va] scanner_signers is empty`,
	} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings lack %q:\n%s", want, w)
		}
	}
	if strings.Contains(w, `"quay.io/*" requires a signed`) {
		t.Errorf("entry overriding require_signed_report = false warned:\n%s", w)
	}
	d := Default()
	d.Policy.Dir = ""
	d.Metrics.Address = "127.0.0.1:9464"
	if got := d.Warnings(); len(got) != 0 {
		t.Errorf("defaults warn: %q", got)
	}
}

// Fields a policy file uses for compatibility but pullguard does not act on are reported the
// way other doubtful settings are, naming the policy, its file and the entry.
func TestWarningsFromPolicies(t *testing.T) {
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "p.yaml"), []byte(`apiVersion: portieris.cloud.ibm.com/v1
kind: ImagePolicy
metadata: {name: gitops, namespace: team-a}
spec:
  repositories:
  - name: "registry.example.com/*"
    policy:
      mutateImage: false
      vulnerability: {ICCRVA: {enabled: true, account: acct-1}}
`), 0o644))
	c := Default()
	c.Policy.Dir = dir
	c.VA.ScannerSigners = []string{"scanner"}
	w := c.Warnings()
	want := []string{
		`ImagePolicy team-a/gitops (` + filepath.Join(dir, "p.yaml") + `): spec.repositories[0] "registry.example.com/*": policy.vulnerability.ICCRVA.account "acct-1" is ignored`,
		`ImagePolicy team-a/gitops (` + filepath.Join(dir, "p.yaml") + `): spec.repositories[0] "registry.example.com/*": policy.mutateImage (false) has no effect`,
	}
	if len(w) != len(want) {
		t.Fatalf("warnings %q", w)
	}
	for i := range want {
		if !strings.HasPrefix(w[i], want[i]) {
			t.Errorf("warning %q, want it to start with %q", w[i], want[i])
		}
	}
}
