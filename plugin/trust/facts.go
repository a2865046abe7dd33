package trust

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// Why a signature was rejected. These strings end up verbatim in denial
// messages.
const (
	ReasonTampered          = "tampered signature" // envelope fails its own integrity check
	ReasonWrongArtifact     = "signature covers a different artifact"
	ReasonUntrusted         = "untrusted certificate"
	ReasonIdentityMismatch  = "identity mismatch"
	ReasonCertValidity      = "certificate expired or not yet valid"
	ReasonSignatureExpired  = "signature expired"
	ReasonRevoked           = "certificate revoked"
	ReasonRevocationUnknown = "certificate revocation status unknown"
	ReasonMalformed         = "malformed signature"
	ReasonUnverifiable      = "unverifiable signature"
)

// Facts is what verification established about one image digest. It holds
// no credentials and is safe to cache under (Digest, TrustMaterialHash).
type Facts struct {
	Repository        string // repository the signatures were read from (the trust policy scope)
	Digest            digest.Digest
	CheckedAt         time.Time
	TrustMaterialHash string   // of the signers verified against
	ConfiguredSigners []string // names of the signers verified against
	// VerifiedSigners are the configured signers with at least one valid
	// signature on Digest, sorted.
	VerifiedSigners []string
	// SignaturesFound is how many signatures the registry listed (itself
	// bounded by the registry client's MaxReferrers); only the first
	// MaxSignatures of them are examined, in Signatures.
	SignaturesFound int
	Signatures      []SignatureResult
}

// SignatureResult is the verdict on one signature.
type SignatureResult struct {
	Digest      digest.Digest // of the signature manifest
	MediaType   string        // envelope media type: application/jose+json (JWS) or application/cose (COSE)
	Signer      string        // first configured signer it is valid for; "" if none
	Signers     []string      // every configured signer it is valid for
	Subject     string        // leaf certificate subject ("" when unreadable)
	Issuer      string        // leaf certificate issuer
	SigningTime time.Time
	Reason      string   // one of the Reason* constants; "" when valid
	Err         string   // detail of the rejection; "" when valid
	Warnings    []string // accepted despite these (revocation = permissive)
}

// Valid reports whether the signature verified for at least one signer.
func (r SignatureResult) Valid() bool { return len(r.Signers) > 0 }

// Verified reports whether signer has a valid signature.
func (f *Facts) Verified(signer string) bool { return slices.Contains(f.VerifiedSigners, signer) }

// Unmet says why f does not satisfy a rule naming required signers: every
// one of them must have signed; with none named, any configured signer will
// do. "" means the rule is satisfied. The text is made for denial messages:
//
//	no valid signature from required signer(s) [release]: found 1 signature: signed by CN=x (untrusted certificate: ...)
func (f *Facts) Unmet(required []string) string {
	if len(required) == 0 {
		if len(f.VerifiedSigners) > 0 {
			return ""
		}
		return fmt.Sprintf("no valid signature from any configured signer %v: %s", f.ConfiguredSigners, f.summary())
	}
	var missing, unknown []string
	for _, name := range required {
		if !f.Verified(name) {
			missing = append(missing, name)
		}
		if !slices.Contains(f.ConfiguredSigners, name) {
			unknown = append(unknown, name)
		}
	}
	if len(missing) == 0 {
		return ""
	}
	msg := fmt.Sprintf("no valid signature from required signer(s) %v", missing)
	if len(unknown) > 0 {
		msg += fmt.Sprintf(" (not configured on this node: %v)", unknown)
	}
	return msg + ": " + f.summary()
}

// summary describes the signatures found, one clause each.
func (f *Facts) summary() string {
	switch {
	case f.SignaturesFound == 0:
		return "found no signature"
	case f.SignaturesFound == 1:
		return "found 1 signature: " + f.Signatures[0].short()
	}
	parts := make([]string, 0, len(f.Signatures))
	for _, s := range f.Signatures {
		parts = append(parts, s.short())
	}
	head := fmt.Sprintf("found %d signatures", f.SignaturesFound)
	if len(f.Signatures) < f.SignaturesFound {
		head += fmt.Sprintf(" (examined the first %d)", len(f.Signatures))
	}
	return head + ": " + strings.Join(parts, "; ")
}

// maxDetail bounds the error detail quoted per signature in a denial.
const maxDetail = 240

func (r SignatureResult) short() string {
	who := "unreadable signature " + shortDigest(r.Digest)
	if r.Subject != "" {
		who = "signed by " + r.Subject
	}
	if r.Valid() {
		return fmt.Sprintf("%s (valid for signer(s) %v)", who, r.Signers)
	}
	detail := r.Err
	if len(detail) > maxDetail {
		detail = detail[:maxDetail] + "..."
	}
	if detail == "" {
		return fmt.Sprintf("%s (%s)", who, r.Reason)
	}
	return fmt.Sprintf("%s (%s: %s)", who, r.Reason, detail)
}

// Explain returns human lines describing the facts, for `pullguard check`
// and debug logs.
func (f *Facts) Explain() []string {
	lines := []string{fmt.Sprintf("%s@%s: %d signature(s) found, %d examined, checked %s against signers %v (trust material %s)",
		f.Repository, f.Digest, f.SignaturesFound, len(f.Signatures), f.CheckedAt.UTC().Format(time.RFC3339), f.ConfiguredSigners, shortDigest(digest.Digest(f.TrustMaterialHash)))}
	if len(f.VerifiedSigners) > 0 {
		lines = append(lines, fmt.Sprintf("verified signers: %v", f.VerifiedSigners))
	} else {
		lines = append(lines, "verified signers: none")
	}
	for _, s := range f.Signatures {
		kind := envelopeKind(s.MediaType)
		subject := s.Subject
		if subject == "" {
			subject = "(certificate unreadable)"
		}
		var verdict string
		if s.Valid() {
			verdict = fmt.Sprintf("valid for signer(s) %v", s.Signers)
		} else {
			verdict = "rejected: " + s.Reason
			if s.Err != "" {
				verdict += ": " + s.Err
			}
		}
		line := fmt.Sprintf("signature %s (%s) by %q issued by %q: %s", shortDigest(s.Digest), kind, subject, s.Issuer, verdict)
		for _, w := range s.Warnings {
			line += "; warning: " + w
		}
		lines = append(lines, line)
	}
	return lines
}

func envelopeKind(mediaType string) string {
	switch mediaType {
	case mediaTypeJWS:
		return "JWS"
	case mediaTypeCOSE:
		return "COSE"
	case "":
		return "unknown envelope"
	}
	return mediaType
}

func shortDigest(d digest.Digest) string {
	s := d.String()
	if i := strings.IndexByte(s, ':'); i >= 0 && len(s) > i+13 {
		return s[:i+13]
	}
	return s
}
