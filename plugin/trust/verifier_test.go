package trust_test

import (
	"bytes"
	"context"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pullguard/pullguard/plugin/registry"
	"github.com/pullguard/pullguard/plugin/registry/registrytest"
	"github.com/pullguard/pullguard/plugin/trust"
	"github.com/pullguard/pullguard/plugin/trust/trusttest"
)

var (
	releaseSubject = pkix.Name{Country: []string{"US"}, Province: []string{"WA"}, Organization: []string{"Example"}, CommonName: "release"}
	// notation requires C, ST and O in an x509.subject identity.
	releaseID = "x509.subject: C=US, ST=WA, O=Example, CN=release"
)

// pki is the trust material every verification test shares: the "release"
// signer's CA, the "qa" signer's CA, and a CA nobody trusts.
type pki struct {
	release, qa, rogue *trusttest.CA
	signers            []*trust.LoadedSigner
}

func newPKI(t *testing.T, revocation string) *pki {
	t.Helper()
	p := &pki{
		release: trusttest.NewCA(t, "release root"),
		qa:      trusttest.NewCA(t, "qa root"),
		rogue:   trusttest.NewCA(t, "rogue root"),
	}
	signers, err := trust.LoadSigners([]trust.Signer{
		{Name: "release", TrustStoreDir: trusttest.WriteStore(t, p.release), Identities: []string{releaseID}, Revocation: revocation},
		{Name: "qa", TrustStoreDir: trusttest.WriteStore(t, p.qa), Identities: []string{"*"}, Revocation: revocation},
	})
	if err != nil {
		t.Fatal(err)
	}
	p.signers = signers
	return p
}

func newVerifier(t *testing.T, signers []*trust.LoadedSigner, regOpts registry.Options, maxSignatures int) *trust.Verifier {
	t.Helper()
	reg, err := registry.New(regOpts)
	if err != nil {
		t.Fatal(err)
	}
	v, err := trust.NewVerifier(trust.Options{Signers: signers, Registry: reg, MaxSignatures: maxSignatures})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func repoName(t *testing.T, host, path string) reference.Named { return repoNameB(t, host, path) }

func repoNameB(t testing.TB, host, path string) reference.Named {
	t.Helper()
	n, err := reference.ParseNormalizedNamed(host + "/" + path)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func trusttestSubject() pkix.Name { return releaseSubject }

// tamper flips a bit inside the signature value of an envelope, keeping it
// well-formed.
func tamper(t *testing.T, mediaType string, blob []byte) []byte {
	t.Helper()
	out := bytes.Clone(blob)
	switch mediaType {
	case trusttest.JWS:
		var env map[string]any
		if err := json.Unmarshal(blob, &env); err != nil {
			t.Fatal(err)
		}
		sig, err := base64.RawURLEncoding.DecodeString(env["signature"].(string))
		if err != nil {
			t.Fatal(err)
		}
		sig[len(sig)/2] ^= 0x01
		env["signature"] = base64.RawURLEncoding.EncodeToString(sig)
		if out, err = json.Marshal(env); err != nil {
			t.Fatal(err)
		}
	case trusttest.COSE:
		// COSE_Sign1 ends with the signature byte string.
		out[len(out)-1] ^= 0x01
	}
	return out
}

func TestVerify(t *testing.T) {
	for _, referrersAPI := range []bool{true, false} {
		t.Run(fmt.Sprintf("referrersAPI=%v", referrersAPI), func(t *testing.T) {
			p := newPKI(t, trust.RevocationSkip)
			srv := registrytest.Start(t, registrytest.Config{Referrers: referrersAPI})
			repo := srv.Repo(t, "app")
			v := newVerifier(t, p.signers, registry.Options{}, 0)
			now := time.Now()

			tests := []struct {
				name         string
				sign         func(t *testing.T, img ocispec.Descriptor)
				wantVerified []string
				wantReasons  []string // per signature, sorted
				required     []string
				wantUnmet    string // substring; "" = satisfied
			}{
				{
					name: "JWS by release",
					sign: func(t *testing.T, img ocispec.Descriptor) {
						trusttest.Sign(t, repo, img, p.release.Leaf(t, releaseSubject), trusttest.JWS)
					},
					wantVerified: []string{"release"}, wantReasons: []string{""}, required: []string{"release"},
				},
				{
					name: "COSE by release",
					sign: func(t *testing.T, img ocispec.Descriptor) {
						trusttest.Sign(t, repo, img, p.release.Leaf(t, releaseSubject), trusttest.COSE)
					},
					wantVerified: []string{"release"}, wantReasons: []string{""}, required: nil,
				},
				{
					name:     "unsigned",
					sign:     func(*testing.T, ocispec.Descriptor) {},
					required: []string{"release"}, wantUnmet: "no valid signature from required signer(s) [release]: found no signature",
				},
				{
					name:     "unsigned, any signer",
					sign:     func(*testing.T, ocispec.Descriptor) {},
					required: nil, wantUnmet: "no valid signature from any configured signer [qa release]: found no signature",
				},
				{
					name: "untrusted CA",
					sign: func(t *testing.T, img ocispec.Descriptor) {
						trusttest.Sign(t, repo, img, p.rogue.Leaf(t, pkix.Name{CommonName: "x"}), trusttest.JWS)
					},
					wantReasons: []string{trust.ReasonUntrusted}, required: []string{"release"},
					wantUnmet: "no valid signature from required signer(s) [release]: found 1 signature: signed by CN=x (untrusted certificate: ",
				},
				{
					name: "identity mismatch",
					sign: func(t *testing.T, img ocispec.Descriptor) {
						trusttest.Sign(t, repo, img, p.release.Leaf(t, pkix.Name{Country: []string{"US"}, Province: []string{"WA"}, Organization: []string{"Example"}, CommonName: "intern"}), trusttest.COSE)
					},
					wantReasons: []string{trust.ReasonIdentityMismatch}, required: []string{"release"},
					wantUnmet: "signed by CN=intern,O=Example,ST=WA,C=US (identity mismatch: ",
				},
				{
					name: "expired certificate",
					sign: func(t *testing.T, img ocispec.Descriptor) {
						leaf := p.release.Leaf(t, releaseSubject, trusttest.Validity(now.Add(-72*time.Hour), now.Add(-24*time.Hour)))
						trusttest.PushEnvelope(t, repo, trusttest.JWS, trusttest.Envelope(t, leaf, trusttest.JWS, img, now.Add(-48*time.Hour)), img)
					},
					wantReasons: []string{trust.ReasonCertValidity}, required: []string{"release"}, wantUnmet: "(certificate expired or not yet valid: ",
				},
				{
					name: "not yet valid certificate",
					sign: func(t *testing.T, img ocispec.Descriptor) {
						leaf := p.release.Leaf(t, releaseSubject, trusttest.Validity(now.Add(24*time.Hour), now.Add(72*time.Hour)))
						trusttest.PushEnvelope(t, repo, trusttest.COSE, trusttest.Envelope(t, leaf, trusttest.COSE, img, now.Add(48*time.Hour)), img)
					},
					wantReasons: []string{trust.ReasonCertValidity}, required: []string{"release"}, wantUnmet: "certificate expired or not yet valid",
				},
				{
					name: "tampered JWS and COSE envelopes",
					sign: func(t *testing.T, img ocispec.Descriptor) {
						for _, mt := range []string{trusttest.JWS, trusttest.COSE} {
							blob := trusttest.Envelope(t, p.release.Leaf(t, releaseSubject), mt, img, now)
							trusttest.PushEnvelope(t, repo, mt, tamper(t, mt, blob), img)
						}
					},
					wantReasons: []string{trust.ReasonTampered, trust.ReasonTampered}, required: []string{"release"},
					wantUnmet: "found 2 signatures: signed by CN=release,O=Example,ST=WA,C=US (tampered signature: ",
				},
				{
					name: "signature of another image attached to this one",
					sign: func(t *testing.T, img ocispec.Descriptor) {
						other := registrytest.PushImage(t, repo, "")
						trusttest.PushEnvelope(t, repo, trusttest.JWS, trusttest.Envelope(t, p.release.Leaf(t, releaseSubject), trusttest.JWS, other, now), img)
					},
					wantReasons: []string{trust.ReasonWrongArtifact}, required: []string{"release"}, wantUnmet: "signature covers a different artifact",
				},
				{
					name: "release and qa",
					sign: func(t *testing.T, img ocispec.Descriptor) {
						trusttest.Sign(t, repo, img, p.release.Leaf(t, releaseSubject), trusttest.JWS)
						trusttest.Sign(t, repo, img, p.qa.Leaf(t, pkix.Name{CommonName: "qa bot"}), trusttest.COSE)
					},
					wantVerified: []string{"qa", "release"}, wantReasons: []string{"", ""}, required: []string{"release", "qa"},
				},
				{
					name: "qa only, release required",
					sign: func(t *testing.T, img ocispec.Descriptor) {
						trusttest.Sign(t, repo, img, p.qa.Leaf(t, pkix.Name{CommonName: "qa bot"}), trusttest.JWS)
					},
					wantVerified: []string{"qa"}, wantReasons: []string{""}, required: []string{"release", "qa"},
					wantUnmet: "no valid signature from required signer(s) [release]: found 1 signature: signed by CN=qa bot (valid for signer(s) [qa])",
				},
				{
					name: "signer not configured",
					sign: func(t *testing.T, img ocispec.Descriptor) {
						trusttest.Sign(t, repo, img, p.release.Leaf(t, releaseSubject), trusttest.JWS)
					},
					wantVerified: []string{"release"}, wantReasons: []string{""}, required: []string{"release", "ops"},
					wantUnmet: "no valid signature from required signer(s) [ops] (not configured on this node: [ops])",
				},
			}
			for i, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					img := registrytest.PushImage(t, repo, fmt.Sprintf("t%d", i))
					tt.sign(t, img)
					facts, err := v.Verify(context.Background(), repoName(t, srv.Host, "app"), img, nil)
					if err != nil {
						t.Fatal(err)
					}
					t.Logf("facts:\n%s", strings.Join(facts.Explain(), "\n"))
					if facts.Digest != img.Digest || facts.Repository != srv.Host+"/app" {
						t.Fatalf("facts about %s@%s", facts.Repository, facts.Digest)
					}
					if !slices.Equal(facts.VerifiedSigners, tt.wantVerified) {
						t.Fatalf("verified signers %v, want %v", facts.VerifiedSigners, tt.wantVerified)
					}
					var reasons []string
					for _, s := range facts.Signatures {
						reasons = append(reasons, s.Reason)
						if s.Valid() != (s.Err == "") || s.Valid() != (s.Signer != "") {
							t.Errorf("inconsistent result %+v", s)
						}
						if s.MediaType != trusttest.JWS && s.MediaType != trusttest.COSE {
							t.Errorf("media type %q", s.MediaType)
						}
					}
					slices.Sort(reasons)
					if !slices.Equal(reasons, tt.wantReasons) {
						t.Fatalf("reasons %q, want %q", reasons, tt.wantReasons)
					}
					unmet := facts.Unmet(tt.required)
					if tt.wantUnmet == "" && unmet != "" || !strings.Contains(unmet, tt.wantUnmet) {
						t.Fatalf("Unmet(%v) = %q, want containing %q", tt.required, unmet, tt.wantUnmet)
					}
				})
			}
		})
	}
}

func TestVerifyBoundsSignaturesExamined(t *testing.T) {
	p := newPKI(t, trust.RevocationSkip)
	srv := registrytest.Start(t, registrytest.Config{Referrers: true})
	repo := srv.Repo(t, "app")
	img := registrytest.PushImage(t, repo, "v1")
	for range 5 {
		trusttest.Sign(t, repo, img, p.rogue.Leaf(t, pkix.Name{CommonName: "spam"}), trusttest.JWS)
	}
	v := newVerifier(t, p.signers, registry.Options{}, 2)
	facts, err := v.Verify(context.Background(), repoName(t, srv.Host, "app"), img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if facts.SignaturesFound != 5 || len(facts.Signatures) != 2 {
		t.Fatalf("found %d, examined %d; want 5 found, 2 examined", facts.SignaturesFound, len(facts.Signatures))
	}
	if u := facts.Unmet(nil); !strings.Contains(u, "found 5 signatures (examined the first 2)") {
		t.Fatalf("Unmet = %q", u)
	}
}

func TestVerifyPrivateRegistry(t *testing.T) {
	p := newPKI(t, trust.RevocationSkip)
	srv := registrytest.Start(t, registrytest.Config{Username: "alice", Password: "s3cret"})
	repo := srv.Repo(t, "private/app")
	img := registrytest.PushImage(t, repo, "v1")
	trusttest.Sign(t, repo, img, p.release.Leaf(t, releaseSubject), trusttest.COSE)
	v := newVerifier(t, p.signers, registry.Options{}, 0)
	name := repoName(t, srv.Host, "private/app")

	facts, err := v.Verify(context.Background(), name, img, registry.CredentialsFromCRI(srv.Host, "alice", "s3cret", "", "", "", ""))
	if err != nil {
		t.Fatal(err)
	}
	if !facts.Verified("release") {
		t.Fatalf("not verified with the right credentials: %v", facts.Explain())
	}
	for _, creds := range []*registry.Credentials{nil, {Username: "alice", Password: "wrong"}} {
		_, err := v.Verify(context.Background(), name, img, creds)
		if !errors.Is(err, registry.ErrUnauthorized) {
			t.Fatalf("creds %v: got %v, want ErrUnauthorized", creds, err)
		}
	}
}

func TestVerifyRegistryUnavailable(t *testing.T) {
	for _, tc := range []struct{ name, hangOn string }{
		{"listing signatures hangs", "/referrers/"},
		{"fetching signature envelopes hangs", "/blobs/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPKI(t, trust.RevocationSkip)
			srv := registrytest.Start(t, registrytest.Config{Referrers: true, Wrap: func(h http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if strings.Contains(r.URL.Path, tc.hangOn) {
						<-r.Context().Done() // hang like an overloaded registry
						return
					}
					h.ServeHTTP(w, r)
				})
			}})
			repo := srv.Repo(t, "app")
			img := registrytest.PushImage(t, repo, "v1")
			for range 3 {
				trusttest.Sign(t, repo, img, p.release.Leaf(t, releaseSubject), trusttest.JWS)
			}
			v := newVerifier(t, p.signers, registry.Options{Timeout: 200 * time.Millisecond}, 0)
			done := make(chan error, 1)
			go func() {
				_, err := v.Verify(context.Background(), repoName(t, srv.Host, "app"), img, nil)
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, registry.ErrUnavailable) {
					t.Fatalf("got %v, want ErrUnavailable", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("verify did not give up although every registry call is bounded by 200ms")
			}
		})
	}
}

// Revocation modes against a real CRL endpoint (revoked), and a leaf whose
// CRL endpoint is unreachable (status unknown), as on an offline node.
func TestVerifyRevocationModes(t *testing.T) {
	crlSrv := httptest.NewServer(nil)
	defer crlSrv.Close()
	deadURL := "http://127.0.0.1:1/unreachable.crl"

	type signed struct{ revoked, unknown, good ocispec.Descriptor }
	setup := func(t *testing.T, mode string) (*trust.Verifier, reference.Named, signed) {
		p := newPKI(t, mode)
		revokedLeaf := p.release.Leaf(t, releaseSubject, trusttest.CRL(crlSrv.URL+"/release.crl"))
		crl := p.release.CRLBytes(t, revokedLeaf)
		crlSrv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(crl) })
		srv := registrytest.Start(t, registrytest.Config{Referrers: true})
		repo := srv.Repo(t, "app")
		var s signed
		s.revoked = registrytest.PushImage(t, repo, "revoked")
		trusttest.Sign(t, repo, s.revoked, revokedLeaf, trusttest.JWS)
		s.unknown = registrytest.PushImage(t, repo, "unknown")
		trusttest.Sign(t, repo, s.unknown, p.release.Leaf(t, releaseSubject, trusttest.CRL(deadURL)), trusttest.JWS)
		s.good = registrytest.PushImage(t, repo, "good")
		trusttest.Sign(t, repo, s.good, p.release.Leaf(t, releaseSubject), trusttest.JWS)
		return newVerifier(t, p.signers, registry.Options{}, 0), repoName(t, srv.Host, "app"), s
	}
	tests := []struct {
		mode                   string
		revoked, unknown, good string // expected Reason ("" = valid)
		unknownWarns           bool
	}{
		{trust.RevocationStrict, trust.ReasonRevoked, trust.ReasonRevocationUnknown, "", false},
		{trust.RevocationPermissive, trust.ReasonRevoked, "", "", true},
		{trust.RevocationSkip, "", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			v, name, s := setup(t, tt.mode)
			for _, c := range []struct {
				img    ocispec.Descriptor
				reason string
				warns  bool
			}{{s.revoked, tt.revoked, false}, {s.unknown, tt.unknown, tt.unknownWarns}, {s.good, tt.good, false}} {
				facts, err := v.Verify(context.Background(), name, c.img, nil)
				if err != nil {
					t.Fatal(err)
				}
				if len(facts.Signatures) != 1 {
					t.Fatalf("%d signatures", len(facts.Signatures))
				}
				got := facts.Signatures[0]
				if got.Reason != c.reason || (len(got.Warnings) > 0) != c.warns {
					t.Fatalf("reason %q warnings %q, want reason %q warnings %v\n%s", got.Reason, got.Warnings, c.reason, c.warns, strings.Join(facts.Explain(), "\n"))
				}
			}
		})
	}
}

// One Verifier serves concurrent decisions (run with -race).
func TestVerifyConcurrent(t *testing.T) {
	p := newPKI(t, trust.RevocationPermissive)
	srv := registrytest.Start(t, registrytest.Config{Referrers: true})
	repo := srv.Repo(t, "app")
	var imgs []ocispec.Descriptor
	for i := range 4 {
		img := registrytest.PushImage(t, repo, fmt.Sprintf("c%d", i))
		leaf := p.release.Leaf(t, releaseSubject)
		if i%2 == 1 {
			leaf = p.rogue.Leaf(t, releaseSubject)
		}
		trusttest.Sign(t, repo, img, leaf, trusttest.JWS)
		imgs = append(imgs, img)
	}
	v := newVerifier(t, p.signers, registry.Options{}, 0)
	errs := make(chan error, 16)
	for i := range 16 {
		go func() {
			img := imgs[i%len(imgs)]
			facts, err := v.Verify(context.Background(), repoName(t, srv.Host, "app"), img, nil)
			switch {
			case err != nil:
				errs <- err
			case facts.Verified("release") != (i%2 == 0):
				errs <- fmt.Errorf("image %d: verified=%v", i%len(imgs), facts.Verified("release"))
			default:
				errs <- nil
			}
		}()
	}
	for range 16 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// A signer with a timestamping (TSA) store still accepts untimestamped
// signatures while the certificate is valid (verifyTimestamp =
// afterCertExpiry), and rejects an expired certificate without a timestamp.
func TestVerifyWithTimestampStore(t *testing.T) {
	ca, tsaRoot := trusttest.NewCA(t, "release root"), trusttest.NewCA(t, "tsa root")
	signer, err := trust.LoadSigner(trust.Signer{Name: "release", TrustStoreDir: trusttest.WriteStore(t, ca),
		TimestampStoreDir: trusttest.WriteStore(t, tsaRoot), Identities: []string{releaseID}, Revocation: trust.RevocationSkip})
	if err != nil {
		t.Fatal(err)
	}
	srv := registrytest.Start(t, registrytest.Config{Referrers: true})
	repo := srv.Repo(t, "app")
	now := time.Now()
	current := registrytest.PushImage(t, repo, "current")
	trusttest.Sign(t, repo, current, ca.Leaf(t, releaseSubject), trusttest.COSE)
	expired := registrytest.PushImage(t, repo, "expired")
	old := ca.Leaf(t, releaseSubject, trusttest.Validity(now.Add(-72*time.Hour), now.Add(-24*time.Hour)))
	trusttest.PushEnvelope(t, repo, trusttest.COSE, trusttest.Envelope(t, old, trusttest.COSE, expired, now.Add(-48*time.Hour)), expired)

	v := newVerifier(t, []*trust.LoadedSigner{signer}, registry.Options{}, 0)
	for _, c := range []struct {
		img        ocispec.Descriptor
		wantReason string
	}{{current, ""}, {expired, trust.ReasonCertValidity}} {
		facts, err := v.Verify(context.Background(), repoName(t, srv.Host, "app"), c.img, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(facts.Signatures) != 1 || facts.Signatures[0].Reason != c.wantReason {
			t.Fatalf("want reason %q:\n%s", c.wantReason, strings.Join(facts.Explain(), "\n"))
		}
	}
}
