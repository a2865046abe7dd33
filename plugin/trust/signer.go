package trust

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	"github.com/notaryproject/notation-go/verifier/truststore"
)

// Revocation checking modes of a signer. Each is safe on a node without
// network access to the CAs' OCSP responders and CRL distribution points in
// its own way:
//
//   - RevocationStrict: a signature verifies only if no certificate in its
//     chain is revoked AND the status of every certificate that names an
//     OCSP/CRL endpoint could be determined. Unreachable responders (an
//     offline node) deny. Certificates naming no endpoint are not revocable
//     and pass (that is how notation treats them). Notation level "strict".
//   - RevocationPermissive: revoked certificates deny; a status that cannot
//     be determined (unreachable responder, timeout) is logged and recorded
//     as a warning on the signature, which verifies. The default.
//   - RevocationSkip: no revocation check and no network access at all.
//     Notation's "revocation: skip" override.
//
// Every other check (integrity, authenticity, trusted identity, expiry and
// certificate validity) is enforced in all three modes.
const (
	RevocationStrict     = "strict"
	RevocationPermissive = "permissive"
	RevocationSkip       = "skip"
)

// Signer is a signer as configured: a name, a trust store (directory of PEM
// or DER X.509 certificates: the roots/CAs its signing certificates chain
// to), the trusted identities (notation's "x509.subject: CN=..,O=.." or "*"),
// an optional timestamping (TSA) root store and a revocation mode.
type Signer struct {
	Name              string
	TrustStoreDir     string
	Identities        []string
	TimestampStoreDir string
	Revocation        string // strict|permissive|skip; "" = permissive
}

// LoadedSigner is a Signer with its trust material read and validated.
type LoadedSigner struct {
	Signer
	roots    []*x509.Certificate
	tsaRoots []*x509.Certificate
	hash     string
}

// MaterialHash identifies the signer's trust material (certificates,
// identities, revocation mode): verification facts computed with other
// material must not be reused.
func (s *LoadedSigner) MaterialHash() string { return s.hash }

// Roots returns the trust store certificates.
func (s *LoadedSigner) Roots() []*x509.Certificate { return slices.Clone(s.roots) }

// signerNameRE keeps names usable as notation trust store and policy names.
var signerNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// maxCertFileBytes bounds one trust store file; a store is config, not data.
const maxCertFileBytes = 1 << 20

// LoadSigner validates s and reads its trust stores. Errors name the signer
// and, for a bad certificate, the file.
func LoadSigner(s Signer) (*LoadedSigner, error) {
	if !signerNameRE.MatchString(s.Name) {
		return nil, fmt.Errorf("signer %q: name must match %s", s.Name, signerNameRE)
	}
	switch s.Revocation {
	case "":
		s.Revocation = RevocationPermissive
	case RevocationStrict, RevocationPermissive, RevocationSkip:
	default:
		return nil, fmt.Errorf("signer %s: revocation %q: want strict, permissive or skip", s.Name, s.Revocation)
	}
	if len(s.Identities) == 0 {
		return nil, fmt.Errorf("signer %s: no trusted identities (use [\"*\"] to trust every certificate chaining to the store)", s.Name)
	}
	if s.TrustStoreDir == "" {
		return nil, fmt.Errorf("signer %s: no trust store", s.Name)
	}
	l := &LoadedSigner{Signer: s}
	var err error
	if l.roots, err = loadCertDir(s.TrustStoreDir, false); err != nil {
		return nil, fmt.Errorf("signer %s: trust store: %w", s.Name, err)
	}
	if s.TimestampStoreDir != "" {
		if l.tsaRoots, err = loadCertDir(s.TimestampStoreDir, true); err != nil {
			return nil, fmt.Errorf("signer %s: timestamp store: %w", s.Name, err)
		}
	}
	// Let notation judge the identities now, so a typo is a config error
	// and not a denial of every image.
	if _, err := l.policy("registry.invalid/validate"); err != nil {
		return nil, fmt.Errorf("signer %s: %w", s.Name, err)
	}
	l.hash = materialHash(l)
	return l, nil
}

// CheckIdentities validates trusted identities exactly as verification will
// (notation's rules: "*" alone, or "x509.subject: <DN>" where the DN has at
// least C, ST (or S) and O, e.g. "x509.subject: C=US, ST=WA, O=Example,
// CN=release"), without reading any trust store. For config validation.
func CheckIdentities(identities []string) error {
	if len(identities) == 0 {
		return errors.New(`no trusted identities (use ["*"] to trust every certificate chaining to the store)`)
	}
	l := &LoadedSigner{Signer: Signer{Name: "check", Identities: identities}}
	_, err := l.policy("registry.invalid/validate")
	return err
}

// LoadSigners loads every signer; names must be unique.
func LoadSigners(signers []Signer) ([]*LoadedSigner, error) {
	var out []*LoadedSigner
	seen := map[string]bool{}
	var errs []error
	for _, s := range signers {
		if seen[s.Name] {
			errs = append(errs, fmt.Errorf("signer %s: defined twice", s.Name))
			continue
		}
		seen[s.Name] = true
		l, err := LoadSigner(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, l)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// TrustMaterialHash identifies a set of signers' trust material, for cache
// keys: facts computed under another hash must be recomputed.
func TrustMaterialHash(signers []*LoadedSigner) string {
	hashes := make([]string, 0, len(signers))
	for _, s := range signers {
		hashes = append(hashes, s.Name+"="+s.hash)
	}
	sort.Strings(hashes)
	sum := sha256.Sum256([]byte(strings.Join(hashes, "\n")))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func materialHash(s *LoadedSigner) string {
	h := sha256.New()
	fmt.Fprintf(h, "name=%s\nrevocation=%s\n", s.Name, s.Revocation)
	ids := slices.Clone(s.Identities)
	sort.Strings(ids)
	for _, id := range ids {
		fmt.Fprintf(h, "identity=%s\n", id)
	}
	for _, set := range []struct {
		kind  string
		certs []*x509.Certificate
	}{{"ca", s.roots}, {"tsa", s.tsaRoots}} {
		fps := make([]string, 0, len(set.certs))
		for _, c := range set.certs {
			sum := sha256.Sum256(c.Raw)
			fps = append(fps, hex.EncodeToString(sum[:]))
		}
		sort.Strings(fps)
		for _, fp := range fps {
			fmt.Fprintf(h, "%s=%s\n", set.kind, fp)
		}
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// LoadTrustStore reads a signer's trust store exactly as verification will
// (CA certificates only, dotfiles skipped, symlinks followed); config
// validation uses it so a config that validates is one whose signers load.
func LoadTrustStore(dir string) ([]*x509.Certificate, error) { return loadCertDir(dir, false) }

// LoadTimestampStore reads a timestamping store (self-signed roots only).
func LoadTimestampStore(dir string) ([]*x509.Certificate, error) { return loadCertDir(dir, true) }

// loadCertDir reads every certificate file in dir. Entries whose names start
// with "." are skipped (a Kubernetes ConfigMap/Secret volume keeps its real
// files under "..data" and exposes them as symlinks, which are followed).
// Anything else that is not a file of valid certificates is an error naming
// it: a store that silently drops a root would deny images unexpectedly.
func loadCertDir(dir string, tsa bool) ([]*x509.Certificate, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	var all []*x509.Certificate
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		certs, err := readCertFile(path)
		if err != nil {
			return nil, err
		}
		if err := truststore.ValidateCertificates(certs); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if tsa {
			for _, c := range certs {
				if c.CheckSignatureFrom(c) != nil || string(c.RawSubject) != string(c.RawIssuer) {
					return nil, fmt.Errorf("%s: certificate %q is not a self-signed root (TSA stores hold roots only)", path, c.Subject)
				}
			}
		}
		all = append(all, certs...)
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("%s: no certificates", dir)
	}
	return all, nil
}

func readCertFile(path string) ([]*x509.Certificate, error) {
	f, err := os.Open(path) // follows symlinks
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (trust stores are flat directories of certificate files)", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxCertFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxCertFileBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxCertFileBytes)
	}
	certs, err := parseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

// parseCerts reads PEM "CERTIFICATE" blocks, or one DER certificate.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		block, r := pem.Decode(rest)
		if block == nil {
			break
		}
		rest = r
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q (want CERTIFICATE)", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) > 0 {
		if strings.TrimSpace(string(rest)) != "" {
			return nil, errors.New("trailing data after the last PEM certificate")
		}
		return certs, nil
	}
	c, err := x509.ParseCertificate(data)
	if err != nil {
		return nil, errors.New("no PEM certificate and not a DER certificate")
	}
	return []*x509.Certificate{c}, nil
}

// policy builds the one-statement notation trust policy for this signer on
// one repository scope.
func (s *LoadedSigner) policy(scope string) (*trustpolicy.Document, error) {
	override := map[trustpolicy.ValidationType]trustpolicy.ValidationAction{}
	if s.Revocation == RevocationSkip {
		override[trustpolicy.TypeRevocation] = trustpolicy.ActionSkip
	}
	stores := []string{"ca:" + s.Name, "signingAuthority:" + s.Name}
	verifyTimestamp := trustpolicy.TimestampOption("")
	if len(s.tsaRoots) > 0 {
		stores = append(stores, "tsa:"+s.Name)
		// A timestamp is needed only to extend a signature past its
		// certificate's expiry; requiring one always would reject every
		// untimestamped signature of a signer that merely configured a TSA.
		verifyTimestamp = trustpolicy.OptionAfterCertExpiry
	}
	doc := &trustpolicy.Document{
		Version: "1.0",
		TrustPolicies: []trustpolicy.TrustPolicy{{
			Name:           s.Name,
			RegistryScopes: []string{scope},
			SignatureVerification: trustpolicy.SignatureVerification{
				VerificationLevel: trustpolicy.LevelStrict.Name,
				Override:          override,
				VerifyTimestamp:   verifyTimestamp,
			},
			TrustStores:       stores,
			TrustedIdentities: slices.Clone(s.Identities),
		}},
	}
	if err := doc.Validate(); err != nil {
		return nil, err // notation's message starts with "trust policy"
	}
	return doc, nil
}
