package trust

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullguard/pullguard/plugin/trust/trusttest"
)

const testID = "x509.subject: C=US, ST=WA, O=Example, CN=release"

// configMapDir lays files out the way the kubelet mounts a ConfigMap or
// Secret: real files in a timestamped dot-directory, "..data" pointing at
// it, and each visible name a symlink through "..data".
func configMapDir(t *testing.T, files map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	real := filepath.Join(dir, "..2026_11_22_10_00_00.123456789")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(real, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Base(real), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for name := range files {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadSignerTrustStores(t *testing.T) {
	ca := trusttest.NewCA(t, "root")
	other := trusttest.NewCA(t, "other root")
	leaf := ca.Leaf(t, trusttestSubject())
	leafPEM := pemOf(leaf.Chain[0].Raw)

	tests := []struct {
		name      string
		dir       func(t *testing.T) string
		wantCerts int
		wantErr   string // substring naming the culprit
	}{
		{"ConfigMap mount with symlinks", func(t *testing.T) string {
			return configMapDir(t, map[string][]byte{"root.pem": ca.PEM(), "other.crt": other.PEM()})
		}, 2, ""},
		{"bundle in one file", func(t *testing.T) string {
			return writeDir(t, map[string][]byte{"bundle.pem": append(ca.PEM(), other.PEM()...)})
		}, 2, ""},
		{"DER file", func(t *testing.T) string {
			return writeDir(t, map[string][]byte{"root.der": ca.Cert.Raw})
		}, 1, ""},
		{"dotfiles skipped", func(t *testing.T) string {
			return writeDir(t, map[string][]byte{"root.pem": ca.PEM(), ".hidden": []byte("junk")})
		}, 1, ""},
		{"garbage file named", func(t *testing.T) string {
			return writeDir(t, map[string][]byte{"root.pem": ca.PEM(), "notes.txt": []byte("hello")})
		}, 0, "notes.txt"},
		{"leaf certificate is not a trust anchor", func(t *testing.T) string {
			return writeDir(t, map[string][]byte{"leaf.pem": leafPEM})
		}, 0, "leaf.pem"},
		{"private key block named", func(t *testing.T) string {
			return writeDir(t, map[string][]byte{"key.pem": []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")})
		}, 0, "key.pem"},
		{"dangling symlink named", func(t *testing.T) string {
			dir := writeDir(t, map[string][]byte{"root.pem": ca.PEM()})
			if err := os.Symlink("/nonexistent/x.pem", filepath.Join(dir, "gone.pem")); err != nil {
				t.Fatal(err)
			}
			return dir
		}, 0, "gone.pem"},
		{"subdirectory named", func(t *testing.T) string {
			dir := writeDir(t, map[string][]byte{"root.pem": ca.PEM()})
			if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			return dir
		}, 0, "sub"},
		{"empty store", func(t *testing.T) string { return t.TempDir() }, 0, "no certificates"},
		{"missing store", func(t *testing.T) string { return "/nonexistent/store" }, 0, "/nonexistent/store"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := LoadSigner(Signer{Name: "release", TrustStoreDir: tt.dir(t), Identities: []string{testID}})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "signer release") {
					t.Fatalf("err = %v, want one naming signer release and %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Roots()) != tt.wantCerts {
				t.Fatalf("%d certificates, want %d", len(s.Roots()), tt.wantCerts)
			}
		})
	}
}

func TestLoadSignerValidation(t *testing.T) {
	store := trusttest.WriteStore(t, trusttest.NewCA(t, "root"))
	tests := []struct {
		name    string
		signer  Signer
		wantErr string
	}{
		{"ok", Signer{Name: "release", TrustStoreDir: store, Identities: []string{testID}}, ""},
		{"wildcard identity", Signer{Name: "any", TrustStoreDir: store, Identities: []string{"*"}, Revocation: "strict"}, ""},
		{"bad name", Signer{Name: "re lease", TrustStoreDir: store, Identities: []string{"*"}}, "name must match"},
		{"no identities", Signer{Name: "r", TrustStoreDir: store}, "no trusted identities"},
		{"identity without C/ST/O", Signer{Name: "r", TrustStoreDir: store, Identities: []string{"x509.subject: CN=release"}}, "mandatory RDN"},
		{"identity without prefix", Signer{Name: "r", TrustStoreDir: store, Identities: []string{"CN=release"}}, "trusted identity"},
		{"bad revocation", Signer{Name: "r", TrustStoreDir: store, Identities: []string{"*"}, Revocation: "sometimes"}, "revocation"},
		{"no store", Signer{Name: "r", Identities: []string{"*"}}, "no trust store"},
		{"TSA store must hold roots", Signer{Name: "r", TrustStoreDir: store, Identities: []string{"*"}, TimestampStoreDir: t.TempDir()}, "timestamp store"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadSigner(tt.signer)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
	if _, err := LoadSigners([]Signer{
		{Name: "a", TrustStoreDir: store, Identities: []string{"*"}},
		{Name: "a", TrustStoreDir: store, Identities: []string{"*"}},
	}); err == nil || !strings.Contains(err.Error(), "defined twice") {
		t.Fatalf("duplicate names: err = %v", err)
	}
}

func TestTrustMaterialHash(t *testing.T) {
	ca1, ca2 := trusttest.NewCA(t, "one"), trusttest.NewCA(t, "two")
	load := func(s Signer) *LoadedSigner {
		t.Helper()
		l, err := LoadSigner(s)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	storeA := trusttest.WriteStore(t, ca1, ca2)
	storeB := trusttest.WriteStore(t, ca2, ca1) // same certs, other file names/order
	base := load(Signer{Name: "r", TrustStoreDir: storeA, Identities: []string{"*"}})
	same := load(Signer{Name: "r", TrustStoreDir: storeB, Identities: []string{"*"}})
	otherCerts := load(Signer{Name: "r", TrustStoreDir: trusttest.WriteStore(t, ca1), Identities: []string{"*"}})
	otherIDs := load(Signer{Name: "r", TrustStoreDir: storeA, Identities: []string{testID}})
	otherMode := load(Signer{Name: "r", TrustStoreDir: storeA, Identities: []string{"*"}, Revocation: RevocationStrict})
	q := load(Signer{Name: "q", TrustStoreDir: storeA, Identities: []string{"*"}})

	if base.MaterialHash() != same.MaterialHash() {
		t.Fatal("same certificates, different hash")
	}
	for name, s := range map[string]*LoadedSigner{"certs": otherCerts, "identities": otherIDs, "revocation": otherMode} {
		if s.MaterialHash() == base.MaterialHash() {
			t.Fatalf("changing %s kept the hash", name)
		}
	}
	if TrustMaterialHash([]*LoadedSigner{base, q}) != TrustMaterialHash([]*LoadedSigner{q, base}) {
		t.Fatal("set hash depends on order")
	}
	if TrustMaterialHash([]*LoadedSigner{base, q}) == TrustMaterialHash([]*LoadedSigner{base}) {
		t.Fatal("set hash ignores a signer")
	}
}

func FuzzParseCerts(f *testing.F) {
	ca := trusttest.NewCA(f, "root")
	f.Add(ca.PEM())
	f.Add(ca.Cert.Raw)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add(append(ca.PEM(), []byte("trailing")...))
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := parseCerts(data)
		if err != nil {
			return
		}
		if len(certs) == 0 {
			t.Fatal("no error and no certificates")
		}
		for _, c := range certs {
			if c == nil || len(c.Raw) == 0 {
				t.Fatal("nil certificate")
			}
		}
	})
}

func TestCheckIdentities(t *testing.T) {
	tests := []struct {
		ids []string
		ok  bool
	}{
		{[]string{"*"}, true},
		{[]string{testID}, true},
		{[]string{"x509.subject: C=US, S=WA, O=Example"}, true},
		{[]string{"x509.subject: CN=release,O=Example"}, false}, // no C and ST
		{[]string{"CN=release"}, false},
		{[]string{"*", testID}, false},
		{nil, false},
	}
	for _, tt := range tests {
		if err := CheckIdentities(tt.ids); (err == nil) != tt.ok {
			t.Errorf("CheckIdentities(%q) = %v, want ok=%v", tt.ids, err, tt.ok)
		}
	}
}
