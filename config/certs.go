package config

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Bounds on what LoadCerts reads: trust stores are small, and a mount full of junk must not
// exhaust memory.
const (
	maxCertFileBytes = 1 << 20
	maxCertFiles     = 1000
)

// LoadCerts reads every certificate in a trust store directory: each regular file (symlinks
// followed, names starting with '.' skipped, as in a ConfigMap or Secret mount) holds one or
// more PEM "CERTIFICATE" blocks or a single DER certificate. A file that holds neither is an
// error naming it, so a mistyped store is caught at validation rather than at the first pull.
// The certificates are returned in file name order.
func LoadCerts(dir string) ([]*x509.Certificate, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read trust store: %w", err)
	}
	var names []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	if len(names) > maxCertFiles {
		return nil, fmt.Errorf("trust store %s: more than %d files", dir, maxCertFiles)
	}
	sort.Strings(names)
	var out []*x509.Certificate
	for _, n := range names {
		path := filepath.Join(dir, n)
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("trust store: %w", err)
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		certs, err := readCertFile(path)
		if err != nil {
			return nil, err
		}
		out = append(out, certs...)
	}
	return out, nil
}

func readCertFile(path string) ([]*x509.Certificate, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("trust store: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCertFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read certificate %s: %w", path, err)
	}
	if len(data) > maxCertFileBytes {
		return nil, fmt.Errorf("certificate file %s: larger than %d bytes", path, maxCertFileBytes)
	}
	var certs []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate file %s: %w", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) > 0 {
		return certs, nil
	}
	c, err := x509.ParseCertificate(data)
	if err != nil {
		return nil, fmt.Errorf("certificate file %s: neither PEM certificates nor a DER certificate", path)
	}
	return []*x509.Certificate{c}, nil
}
