// Package trust verifies Notary Project (notation) signatures on image
// digests against the signers configured on the node, and reports facts:
// which signers' signatures verified, and for every signature examined why it
// was accepted or rejected.
//
// A signer is a name, a trust store (a flat directory of PEM or DER root/CA
// certificates; symlinks are followed and dot-entries skipped, so a
// Kubernetes ConfigMap or Secret volume works), trusted identities in
// notation's syntax ("*", or "x509.subject: C=US, ST=WA, O=Example,
// CN=release" — notation requires C, ST and O), an optional timestamping
// (TSA) root store, and a revocation mode (strict, permissive, skip; see
// RevocationStrict).
//
// For each decision a notation trust policy is built in memory per signer:
// one statement, level "strict" (integrity, authenticity, expiry and
// certificate validity enforced), scoped to exactly the image's repository,
// trusting only that signer's store and identities. Each signature is
// verified against each signer's policy, so the facts name the signers a
// signature is valid for and, when none, the most telling rejection reason.
//
// Signatures are found through the registry client (OCI referrers API, or
// the referrers tag schema), at most MaxSignatures per image. Facts carry no
// credentials and can be cached by (digest, TrustMaterialHash).
package trust
