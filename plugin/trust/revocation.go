package trust

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"

	"github.com/notaryproject/notation-core-go/revocation"
	"github.com/notaryproject/notation-core-go/revocation/result"
	"github.com/notaryproject/notation-go/verifier/truststore"
)

// memoryStore serves one signer's already loaded certificates to notation,
// under the signer's name for every store type notation asks for. (notation's
// own file store refuses symlinks, which Kubernetes volumes are made of.)
type memoryStore struct{ s *LoadedSigner }

func (m memoryStore) GetCertificates(_ context.Context, storeType truststore.Type, name string) ([]*x509.Certificate, error) {
	if name != m.s.Name {
		return nil, truststore.TrustStoreError{Msg: fmt.Sprintf("trust store %q is not signer %s's", name, m.s.Name)}
	}
	switch storeType {
	case truststore.TypeCA, truststore.TypeSigningAuthority:
		return slices.Clone(m.s.roots), nil
	case truststore.TypeTSA:
		return slices.Clone(m.s.tsaRoots), nil
	}
	return nil, truststore.TrustStoreError{Msg: fmt.Sprintf("unsupported trust store type %q", storeType)}
}

// modeValidator applies a signer's revocation mode around notation's
// network revocation validator. It lives for one signature's verification
// and collects the warnings that permissive mode turns failures into.
type modeValidator struct {
	mode     string
	inner    revocation.Validator
	log      *slog.Logger
	purpose  string // "code signing" or "timestamping", for messages
	warnings *[]string
}

func (v *modeValidator) ValidateContext(ctx context.Context, opts revocation.ValidateContextOptions) ([]*result.CertRevocationResult, error) {
	if v.mode == RevocationSkip {
		// Reached only for timestamping chains (notation skips code signing
		// chains itself): answer without touching the network.
		return nonRevokable(len(opts.CertChain)), nil
	}
	results, err := v.inner.ValidateContext(ctx, opts)
	if v.mode == RevocationStrict {
		return results, err
	}
	if err != nil {
		v.warn(ctx, fmt.Sprintf("%s certificate revocation status could not be checked: %v", v.purpose, err))
		return nonRevokable(len(opts.CertChain)), nil
	}
	out := make([]*result.CertRevocationResult, len(results))
	for i, r := range results {
		if r != nil && r.Result == result.ResultUnknown {
			subject := ""
			if i < len(opts.CertChain) {
				subject = opts.CertChain[i].Subject.String()
			}
			v.warn(ctx, fmt.Sprintf("revocation status of %s certificate %q unknown (responder unreachable?)", v.purpose, subject))
			c := *r
			c.Result = result.ResultNonRevokable
			r = &c
		}
		out[i] = r
	}
	return out, nil
}

func (v *modeValidator) warn(ctx context.Context, msg string) {
	v.log.WarnContext(ctx, "revocation check inconclusive, accepted (revocation = permissive)", "detail", msg)
	*v.warnings = append(*v.warnings, msg)
}

func nonRevokable(n int) []*result.CertRevocationResult {
	out := make([]*result.CertRevocationResult, n)
	for i := range out {
		out[i] = &result.CertRevocationResult{Result: result.ResultNonRevokable}
	}
	return out
}
