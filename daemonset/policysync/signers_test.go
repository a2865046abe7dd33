package policysync

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"
)

func testCertPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "release"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestCertFiles(t *testing.T) {
	cert := testCertPEM(t)
	keyPEM := []byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n")
	tests := []struct {
		name    string
		data    map[string][]byte
		want    []string
		wantErr string
	}{
		{"ca.crt", map[string][]byte{"ca.crt": cert}, []string{"ca.crt"}, ""},
		{"pem keys, tls pair ignored", map[string][]byte{"a.pem": cert, "b.crt": append(append([]byte{}, cert...), cert...), "tls.crt": cert, "tls.key": keyPEM}, []string{"a.pem", "b.crt"}, ""},
		{"private key under a cert name", map[string][]byte{"ca.crt": append(append([]byte{}, cert...), keyPEM...)}, nil, "only CERTIFICATE"},
		{"garbage", map[string][]byte{"ca.crt": []byte("hello")}, nil, "no PEM certificate"},
		{"trailing", map[string][]byte{"ca.crt": append(append([]byte{}, cert...), "junk"...)}, nil, "trailing"},
		{"nothing usable", map[string][]byte{"token": []byte("x")}, nil, "no certificate keys"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := certFiles(tc.data)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for n := range got {
				names = append(names, n)
			}
			slices.Sort(names)
			if !slices.Equal(names, tc.want) {
				t.Errorf("files = %v, want %v", names, tc.want)
			}
		})
	}
}

func TestSignerNamesOf(t *testing.T) {
	spec := specOf(t, `{repositories: [
	  {name: a, policy: {trust: {enabled: true, signerSecrets: [{name: release}, {name: "../etc"}], signers: [ops, release]}}},
	  {name: b, policy: {va: {enabled: true}}},
	  {name: c}]}`)
	got := map[string]bool{}
	signerNamesOf(spec, got)
	if len(got) != 2 || !got["release"] || !got["ops"] {
		t.Errorf("names = %v, want release and ops (a path is never a name)", got)
	}
}
