package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// notationCLI runs the notation CLI the way a release pipeline would, with its keys,
// certificates and config kept under home (XDG_CONFIG_HOME) instead of the user's own.
type notationCLI struct {
	bin  string
	home string
}

// display is the command line a user would type, for the demo's output.
func (n notationCLI) display(args ...string) string {
	return "XDG_CONFIG_HOME=" + n.home + " notation " + strings.Join(args, " ")
}

// run runs notation and returns its combined output; a non-zero exit is an error that
// carries the output.
func (n notationCLI) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, n.bin, args...)
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+n.home)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("notation %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// localCert is where `notation cert generate-test` leaves the certificate of key name.
func (n notationCLI) localCert(name string) string {
	return filepath.Join(n.home, "notation", "localkeys", name+".crt")
}

// readCert reads the first PEM certificate in path.
func readCert(path string) (*x509.Certificate, []byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read certificate: %w", err)
	}
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("read certificate %s: no PEM CERTIFICATE block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse certificate %s: %w", path, err)
	}
	return cert, raw, nil
}

// subjectIdentity builds a signer's trusted identity from the certificate's subject, so the
// demo trusts exactly what notation generated rather than a subject written down by hand
// that would silently stop matching if notation changed its test certificates. notation
// requires C, ST and O in an x509.subject identity.
func subjectIdentity(cert *x509.Certificate) (string, error) {
	s := cert.Subject
	var parts []string
	add := func(attr string, values []string) {
		for _, v := range values {
			parts = append(parts, attr+"="+escapeDN(v))
		}
	}
	add("C", s.Country)
	add("ST", s.Province)
	add("L", s.Locality)
	add("O", s.Organization)
	add("OU", s.OrganizationalUnit)
	if s.CommonName != "" {
		add("CN", []string{s.CommonName})
	}
	if len(s.Country) == 0 || len(s.Province) == 0 || len(s.Organization) == 0 {
		return "", errors.New("certificate subject " + s.String() + " lacks C, ST or O, which notation requires in an identity")
	}
	return "x509.subject: " + strings.Join(parts, ", "), nil
}

// escapeDN escapes the characters RFC 4514 gives a meaning in a distinguished name.
func escapeDN(v string) string {
	var b strings.Builder
	for i, r := range v {
		if strings.ContainsRune(`,+"\<>;=`, r) || (i == 0 && (r == ' ' || r == '#')) || (i == len(v)-1 && r == ' ') {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
