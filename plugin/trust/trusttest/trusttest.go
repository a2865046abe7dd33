// Package trusttest makes test PKIs (a root CA and code-signing leaves that
// satisfy notation's certificate requirements) and signs images in test
// registries with notation-go, as a release pipeline would.
package trusttest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/notaryproject/notation-core-go/signature"
	_ "github.com/notaryproject/notation-core-go/signature/cose" // registers COSE
	_ "github.com/notaryproject/notation-core-go/signature/jws"  // registers JWS
	"github.com/notaryproject/notation-go"
	notationregistry "github.com/notaryproject/notation-go/registry"
	"github.com/notaryproject/notation-go/signer"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry/remote"
)

// Envelope media types.
const (
	JWS  = "application/jose+json"
	COSE = "application/cose"
)

// CA is a test root certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// Leaf is a signing certificate with its key; Chain is leaf first, root last.
type Leaf struct {
	Key   crypto.PrivateKey
	Chain []*x509.Certificate
}

// serial returns a random certificate serial number (unique in practice).
func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// NewCA creates a root CA valid from 30 days ago for a year (so leaves can
// be back-dated within it).
func NewCA(t testing.TB, cn string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"pullguard test"}},
		NotBefore:             time.Now().Add(-30 * 24 * time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: cert, Key: key}
}

// LeafOption adjusts a leaf certificate template.
type LeafOption func(*x509.Certificate)

// Validity sets the leaf's validity period.
func Validity(notBefore, notAfter time.Time) LeafOption {
	return func(c *x509.Certificate) { c.NotBefore, c.NotAfter = notBefore, notAfter }
}

// OCSP sets the leaf's OCSP responder URLs.
func OCSP(urls ...string) LeafOption { return func(c *x509.Certificate) { c.OCSPServer = urls } }

// CRL sets the leaf's CRL distribution points.
func CRL(urls ...string) LeafOption {
	return func(c *x509.Certificate) { c.CRLDistributionPoints = urls }
}

// Leaf issues a code-signing leaf (digitalSignature key usage, codeSigning
// extended key usage, not a CA), valid from an hour ago for a day unless
// options say otherwise.
func (ca *CA) Leaf(t testing.TB, subject pkix.Name, opts ...LeafOption) *Leaf {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               subject,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	}
	for _, o := range opts {
		o(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &Leaf{Key: key, Chain: []*x509.Certificate{cert, ca.Cert}}
}

// CRLBytes returns a DER CRL signed by ca revoking the given leaves.
func (ca *CA) CRLBytes(t testing.TB, revoked ...*Leaf) []byte {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, l := range revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: l.Chain[0].SerialNumber, RevocationTime: time.Now().Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    serial(),
		ThisUpdate:                time.Now().Add(-time.Minute),
		NextUpdate:                time.Now().Add(time.Hour),
		RevokedCertificateEntries: entries,
	}, ca.Cert, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// PEM encodes the CA certificate.
func (ca *CA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// WriteStore writes the certificates of cas into a new trust store
// directory (one PEM file each) and returns it.
func WriteStore(t testing.TB, cas ...*CA) string {
	t.Helper()
	dir := t.TempDir()
	for i, ca := range cas {
		if err := os.WriteFile(filepath.Join(dir, "ca"+string(rune('0'+i))+".pem"), ca.PEM(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Sign signs subject (an image in repo) with notation-go's generic signer
// and pushes the signature, as `notation sign` does.
func Sign(t testing.TB, repo *remote.Repository, subject ocispec.Descriptor, leaf *Leaf, mediaType string) ocispec.Descriptor {
	t.Helper()
	s, err := signer.NewGenericSigner(leaf.Key, leaf.Chain)
	if err != nil {
		t.Fatal(err)
	}
	before := map[string]bool{}
	for _, d := range Signatures(t, repo, subject) {
		before[d.Digest.String()] = true
	}
	_, err = notation.Sign(context.Background(), s, notationregistry.NewRepository(repo), notation.SignOptions{
		SignerSignOptions: notation.SignerSignOptions{SignatureMediaType: mediaType},
		ArtifactReference: subject.Digest.String(),
	})
	if err != nil {
		t.Fatalf("notation sign: %v", err)
	}
	for _, d := range Signatures(t, repo, subject) {
		if !before[d.Digest.String()] {
			return d
		}
	}
	t.Fatal("signed, but the new signature is not listed")
	return ocispec.Descriptor{}
}

// Envelope produces a signature envelope over target claiming signingTime,
// for signatures notation's signer would refuse to make now (e.g. with a
// since expired certificate).
func Envelope(t testing.TB, leaf *Leaf, mediaType string, target ocispec.Descriptor, signingTime time.Time) []byte {
	t.Helper()
	payload, err := json.Marshal(map[string]any{"targetArtifact": ocispec.Descriptor{MediaType: target.MediaType, Digest: target.Digest, Size: target.Size}})
	if err != nil {
		t.Fatal(err)
	}
	ls, err := signature.NewLocalSigner(leaf.Chain, leaf.Key)
	if err != nil {
		t.Fatal(err)
	}
	env, err := signature.NewEnvelope(mediaType)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := env.Sign(&signature.SignRequest{
		Payload:       signature.Payload{ContentType: "application/vnd.cncf.notary.payload.v1+json", Content: payload},
		Signer:        ls,
		SigningTime:   signingTime,
		SigningScheme: signature.SigningSchemeX509,
		SigningAgent:  "pullguard-trusttest",
	})
	if err != nil {
		t.Fatalf("sign envelope: %v", err)
	}
	return blob
}

// PushEnvelope pushes an envelope as a notation signature of subject.
func PushEnvelope(t testing.TB, repo *remote.Repository, mediaType string, blob []byte, subject ocispec.Descriptor) ocispec.Descriptor {
	t.Helper()
	_, desc, err := notationregistry.NewRepository(repo).PushSignature(context.Background(), mediaType, blob, subject, nil)
	if err != nil {
		t.Fatalf("push signature: %v", err)
	}
	return desc
}

// FetchEnvelope returns the envelope blob of a pushed signature manifest.
func FetchEnvelope(t testing.TB, repo *remote.Repository, sigManifest ocispec.Descriptor) []byte {
	t.Helper()
	blob, _, err := notationregistry.NewRepository(repo).FetchSignatureBlob(context.Background(), sigManifest)
	if err != nil {
		t.Fatal(err)
	}
	return blob
}

// Signatures lists the notation signature manifests of subject.
func Signatures(t testing.TB, repo *remote.Repository, subject ocispec.Descriptor) []ocispec.Descriptor {
	t.Helper()
	var out []ocispec.Descriptor
	err := notationregistry.NewRepository(repo).ListSignatures(context.Background(), subject, func(d []ocispec.Descriptor) error {
		out = append(out, d...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
