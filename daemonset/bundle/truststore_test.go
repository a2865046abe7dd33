package bundle

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

	"github.com/pullguard/pullguard/daemonset/hoststate"
)

func selfSignedPEM(t *testing.T, cn string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn, Organization: []string{"Example"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

const signerConfig = goodConfig + `
[[signers]]
name = "release"
trust_store = "/etc/pullguard/truststore/release"
identities = ["*"]
`

const trustPolicy = `apiVersion: pullguard.dev/v1beta1
kind: ClusterImagePolicy
metadata:
  name: default
spec:
  repositories:
  - name: "*"
    policy:
      trust:
        enabled: true
        signerSecrets:
        - name: release
`

func TestTruststores(t *testing.T) {
	cert := selfSignedPEM(t, "release")
	tests := []struct {
		name    string
		managed bool
		stores  map[string][]byte
		wantErr string
	}{
		{"signer's store shipped in the bundle", true, map[string][]byte{"release": cert}, ""},
		{"signer's store removed from the bundle", true, map[string][]byte{}, "release"},
		{"not a certificate", true, map[string][]byte{"release": []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")}, "release"},
		{"unmanaged and absent on the host", false, nil, "release"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := &Bundle{Config: []byte(signerConfig), Policies: map[string][]byte{"p.yaml": []byte(trustPolicy)},
				Truststores: tc.stores, TruststoresManaged: tc.managed}
			root := hoststate.Root(t.TempDir())
			err := b.Validate(root, hoststate.Node{})
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				if _, err := b.WriteToHost(root, hoststate.Node{}); err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(root.Path(hoststate.TruststorePath + "/release/release.pem"))
				if err != nil || string(got) != string(cert) {
					t.Errorf("installed trust store = %q, %v", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate = %v, want error mentioning %q", err, tc.wantErr)
			}
		})
	}
}

func TestReadTruststores(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(goodConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	stores := filepath.Join(dir, "truststore")
	configMapDir(t, mkdir(t, stores), map[string]string{"release.pem": "PEM", "scanner.crt": "CRT", "README": "ignored"})
	b, err := Read(Source{ConfigFile: cfg, TruststoreDir: stores})
	if err != nil {
		t.Fatal(err)
	}
	if !b.TruststoresManaged || len(b.Truststores) != 2 || string(b.Truststores["release"]) != "PEM" || string(b.Truststores["scanner"]) != "CRT" {
		t.Errorf("truststores = %v managed=%t", b.Truststores, b.TruststoresManaged)
	}
	// A missing (optional) ConfigMap mount means "not managed".
	b, err = Read(Source{ConfigFile: cfg, TruststoreDir: filepath.Join(dir, "absent")})
	if err != nil || b.TruststoresManaged {
		t.Errorf("absent trust store dir: managed=%t err=%v", b.TruststoresManaged, err)
	}
}

func TestHandProvisionedTruststoresSurvive(t *testing.T) {
	root := hoststate.Root(t.TempDir())
	hand := root.Path(hoststate.TruststorePath + "/release/ca.pem")
	if err := os.MkdirAll(filepath.Dir(hand), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hand, []byte("by hand"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := &Bundle{Config: []byte(goodConfig), TruststoresManaged: true, Truststores: map[string][]byte{}}
	if _, err := b.WriteToHost(root, hoststate.Node{}); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(hand); err != nil || string(got) != "by hand" {
		t.Errorf("hand-provisioned trust store touched: %q, %v", got, err)
	}
	// ... and a config naming them validates against them.
	if err := os.WriteFile(hand, selfSignedPEM(t, "release"), 0o644); err != nil {
		t.Fatal(err)
	}
	b.Config, b.Policies = []byte(signerConfig), map[string][]byte{"p.yaml": []byte(trustPolicy)}
	if err := b.Validate(root, hoststate.Node{}); err != nil {
		t.Errorf("hand-provisioned trust store not used for validation: %v", err)
	}
}

func mkdir(t *testing.T, p string) string {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
