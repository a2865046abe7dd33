package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullguard/pullguard/integration/testbed"
	"github.com/pullguard/pullguard/plugin/registry/registrytest"
	"github.com/pullguard/pullguard/plugin/trust/trusttest"
)

// Trust end to end (issue 3): notation signatures verified at pull time against the real
// distribution registry (referrers tag schema) and an in-process registry with the referrers
// API, the pull pinned to the verified digest, every denial reason as kubelet would see it.

const registryUnavailable = "RegistryUnavailable: "

// assertPinnedPull checks what an admitted pull left in containerd: the image under the tag
// kubelet asked for and under repo@digest, findable by tag through pullguard.
func assertPinnedPull(t *testing.T, b *testbed.Bed, pg *testbed.Pullguard, img testbed.PushedImage) {
	t.Helper()
	ctx := testCtx(t)
	assertPresent(t, ctx, b, img.Ref)
	assertPresent(t, ctx, b, img.Pinned())
	r := pg.Crictl.Run(ctx, "inspecti", "-o", "go-template", "--template", "{{.status.id}} {{.status.repoDigests}}", img.Ref)
	if r.Err != nil || !strings.Contains(r.Stdout, img.ID) || !strings.Contains(r.Stdout, img.Digest) {
		t.Errorf("image status by tag through pullguard: want id %s and repo digest %s: %v", img.ID, img.Digest, r)
	}
}

func TestTrustSignedImageAdmittedAndPinned(t *testing.T) {
	t.Parallel()
	b := sharedBed(t)
	k := newSigningKit(t)
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() +
		policyTOML("trusted", "trust-ok", entry{name: b.Registry.Host + "/trust-ok/*", trust: true, signers: []string{"release"}})})
	for _, env := range []struct{ name, mediaType string }{{"jws", trusttest.JWS}, {"cose", trusttest.COSE}} {
		t.Run(env.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			img := pushTiny(t, b, "trust-ok/"+env.name+":v1")
			sign(t, img, k.releaseLeaf, env.mediaType, nil)

			r := pullIn(t, ctx, b, pg, "trust-ok", "signed-"+env.name, img.Ref)
			if r.Err != nil {
				t.Fatalf("pull of a release-signed image denied: %v", r)
			}
			if !strings.Contains(r.Stdout, img.ID) {
				t.Errorf("crictl pull should report the image id %s: %v", img.ID, r)
			}
			assertPinnedPull(t, b, pg, img)
			if lines := pg.LogLines(img.Digest, "trust-ok", "admit"); len(lines) == 0 {
				t.Errorf("no audit line admits %s for trust-ok", img.Digest)
			}
			// kubelet pulling the same tag again (imagePullPolicy: Always) still works.
			if r := pullIn(t, ctx, b, pg, "trust-ok", "signed-"+env.name, img.Ref); r.Err != nil || !strings.Contains(r.Stdout, img.ID) {
				t.Errorf("second pull of the same tag: %v", r)
			}
			assertPinnedPull(t, b, pg, img)
		})
	}
}

// TestTrustNotationCLISignature: a signature made by the notation CLI itself, with the
// self-signed certificate of `notation cert generate-test`, is accepted.
func TestTrustNotationCLISignature(t *testing.T) {
	t.Parallel()
	b := sharedBed(t)
	ctx := testCtx(t)
	xdg := t.TempDir()
	const name = "pullguard-e2e"
	notation := func(args ...string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, b.Tools.Notation, args...)
		cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+xdg)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("notation %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	notation("cert", "generate-test", "--default", name)
	cert, err := os.ReadFile(filepath.Join(xdg, "notation", "localkeys", name+".crt"))
	if err != nil {
		t.Fatalf("certificate made by notation: %v", err)
	}
	store := t.TempDir()
	if err := os.WriteFile(filepath.Join(store, name+".crt"), cert, 0o644); err != nil {
		t.Fatal(err)
	}
	signed := pushTiny(t, b, "trust-cli/app:v1")
	unsigned := pushTiny(t, b, "trust-cli/unsigned:v1")
	notation("sign", "--insecure-registry", signed.Pinned())

	pg := startPullguard(t, b, testbed.PullguardOptions{Config: `[[signers]]
name = "cli"
trust_store = "` + store + `"
identities = ["x509.subject: C=US, ST=WA, L=Seattle, O=Notary, CN=` + name + `"]
revocation = "skip"

` + policyTOML("cli", "trust-cli", entry{name: b.Registry.Host + "/trust-cli/*", trust: true, signers: []string{"cli"}})})

	if r := pullIn(t, ctx, b, pg, "trust-cli", "cli", signed.Ref); r.Err != nil {
		t.Fatalf("pull of an image signed with the notation CLI denied: %v", r)
	}
	assertPinnedPull(t, b, pg, signed)
	assertDenial(t, pullIn(t, ctx, b, pg, "trust-cli", "cli", unsigned.Ref), denialPrefix, "[cli]", "found no signature")
	assertDeniedPullLeftNothing(t, ctx, b, unsigned)
}

// TestTrustPrivateRegistryCredentials: a registry that needs the pull credentials kubelet sends
// (htpasswd on a second distribution registry). pullguard uses them for its own fetches, passes
// them on to containerd, and never logs them.
func TestTrustPrivateRegistryCredentials(t *testing.T) {
	t.Parallel()
	b := sharedBed(t)
	ctx := testCtx(t)
	k := newSigningKit(t)
	secret := make([]byte, 8)
	_, _ = rand.Read(secret)
	user := &testbed.BasicAuth{Username: "puller", Password: "pw-" + hex.EncodeToString(secret)}
	wrong := "wrong-" + hex.EncodeToString(secret)
	reg, err := testbed.StartRegistry(ctx, b.Tools, filepath.Join(b.Dir, "privreg-"+hex.EncodeToString(secret[:3])), user)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Stop() })
	if err := b.AllowPlainHTTP(reg.Host); err != nil {
		t.Fatal(err)
	}
	ok := pushTinyTo(t, reg, "private/app:v1")
	other := pushTinyTo(t, reg, "private/other:v1")
	sign(t, ok, k.releaseLeaf, trusttest.JWS, user)
	sign(t, other, k.releaseLeaf, trusttest.JWS, user)

	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() +
		policyTOML("private", "private", entry{name: reg.Host + "/private/*", trust: true, signers: []string{"release"}})})

	r := pullIn(t, ctx, b, pg, "private", "priv", ok.Ref, "--creds", user.Username+":"+user.Password)
	if r.Err != nil {
		t.Fatalf("pull with the registry's credentials denied: %v", r)
	}
	assertPinnedPull(t, b, pg, ok)

	// The signature fetch needs the credentials: wrong or none deny, and nothing is pulled.
	assertDenial(t, pullIn(t, ctx, b, pg, "private", "priv", other.Ref, "--creds", user.Username+":"+wrong), denialPrefix, "refused access")
	assertDeniedPullLeftNothing(t, ctx, b, other)
	assertDenial(t, pullIn(t, ctx, b, pg, "private", "priv", other.Ref), denialPrefix, "refused access")
	assertDeniedPullLeftNothing(t, ctx, b, other)

	logs := pg.Logs()
	for _, pw := range []string{user.Password, wrong, base64Basic(user.Username, user.Password), base64Basic(user.Username, wrong)} {
		if strings.Contains(logs, pw) {
			t.Errorf("pullguard's log contains a password (or its basic-auth encoding) %q", pw)
		}
	}
}

// TestTrustReferrersAPIRegistry: signatures found through the OCI referrers API (an in-process
// go-containerregistry registry that has it; nothing is pushed under the tag schema), with
// containerd pulling from the same registry.
func TestTrustReferrersAPIRegistry(t *testing.T) {
	t.Parallel()
	b := sharedBed(t)
	ctx := testCtx(t)
	k := newSigningKit(t)
	srv := registrytest.Start(t, registrytest.Config{Referrers: true})
	if err := b.AllowPlainHTTP(srv.Host); err != nil {
		t.Fatal(err)
	}
	reg := testbed.RegistryAt(srv.Host, nil)
	signed := pushTinyTo(t, reg, "refapi/app:v1")
	unsigned := pushTinyTo(t, reg, "refapi/unsigned:v1")
	r := srv.Repo(t, "refapi/app")
	trusttest.Sign(t, r, describe(t, r, signed), k.releaseLeaf, trusttest.COSE)
	// The signature is reachable through the API only: no tag-schema index exists.
	if _, err := r.Resolve(ctx, strings.Replace(signed.Digest, ":", "-", 1)); err == nil {
		t.Fatalf("a referrers tag-schema index exists for %s; the test would not exercise the referrers API", signed.Digest)
	}

	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() +
		policyTOML("refapi", "refapi", entry{name: srv.Host + "/refapi/*", trust: true, signers: []string{"release"}})})
	if res := pullIn(t, ctx, b, pg, "refapi", "ra", signed.Ref); res.Err != nil {
		t.Fatalf("pull of an image signed through the referrers API denied: %v", res)
	}
	assertPinnedPull(t, b, pg, signed)
	assertDenial(t, pullIn(t, ctx, b, pg, "refapi", "ra", unsigned.Ref), denialPrefix, "found no signature")
	assertDeniedPullLeftNothing(t, ctx, b, unsigned)
}

// TestTrustDenials: each reason a signature is refused, as crictl (kubelet) shows it; nothing
// of the image reaches containerd.
func TestTrustDenials(t *testing.T) {
	t.Parallel()
	b := sharedBed(t)
	k := newSigningKit(t)
	host := b.Registry.Host
	dead := closedLoopbackHost(t)
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() + policyTOML("deny", "trust-deny",
		entry{name: host + "/trust-deny/*", trust: true, signers: []string{"release"}},
		entry{name: host + "/trust-deny/two/*", trust: true, signers: []string{"release", "qa"}},
		entry{name: dead + "/*", trust: true},
	)})
	now := time.Now()
	tests := []struct {
		name   string
		repo   string
		sign   func(t *testing.T, img testbed.PushedImage)
		prefix string
		want   []string
	}{
		{"no signature", "trust-deny/none", func(*testing.T, testbed.PushedImage) {}, denialPrefix,
			[]string{"no valid signature from required signer(s) [release]", "found no signature"}},
		{"untrusted certificate", "trust-deny/rogue", func(t *testing.T, img testbed.PushedImage) {
			sign(t, img, k.rogueLeaf, trusttest.JWS, nil)
		}, denialPrefix, []string{"[release]", "untrusted certificate"}},
		{"identity mismatch", "trust-deny/intruder", func(t *testing.T, img testbed.PushedImage) {
			sign(t, img, k.release.Leaf(t, subject("intruder")), trusttest.JWS, nil)
		}, denialPrefix, []string{"[release]", "identity mismatch"}},
		{"expired certificate", "trust-deny/expired", func(t *testing.T, img testbed.PushedImage) {
			leaf := k.release.Leaf(t, subject("release"), trusttest.Validity(now.Add(-72*time.Hour), now.Add(-24*time.Hour)))
			r := repoClient(t, img.Ref, nil)
			d := describe(t, r, img)
			trusttest.PushEnvelope(t, r, trusttest.JWS, trusttest.Envelope(t, leaf, trusttest.JWS, d, now.Add(-48*time.Hour)), d)
		}, denialPrefix, []string{"[release]", "certificate expired or not yet valid"}},
		{"not yet valid certificate", "trust-deny/future", func(t *testing.T, img testbed.PushedImage) {
			leaf := k.release.Leaf(t, subject("release"), trusttest.Validity(now.Add(24*time.Hour), now.Add(72*time.Hour)))
			r := repoClient(t, img.Ref, nil)
			d := describe(t, r, img)
			trusttest.PushEnvelope(t, r, trusttest.JWS, trusttest.Envelope(t, leaf, trusttest.JWS, d, now.Add(48*time.Hour)), d)
		}, denialPrefix, []string{"[release]", "certificate expired or not yet valid"}},
		{"tampered envelope", "trust-deny/tampered", func(t *testing.T, img testbed.PushedImage) {
			r := repoClient(t, img.Ref, nil)
			d := describe(t, r, img)
			trusttest.PushEnvelope(t, r, trusttest.JWS, tamperJWS(t, trusttest.Envelope(t, k.releaseLeaf, trusttest.JWS, d, now)), d)
		}, denialPrefix, []string{"[release]", "tampered signature"}},
		{"signature of another image attached", "trust-deny/borrowed", func(t *testing.T, img testbed.PushedImage) {
			// A valid release signature, but over another manifest: copied onto this image.
			other := pushTiny(t, b, "trust-deny/borrowed:other")
			r := repoClient(t, img.Ref, nil)
			trusttest.PushEnvelope(t, r, trusttest.JWS, trusttest.Envelope(t, k.releaseLeaf, trusttest.JWS, describe(t, r, other), now), describe(t, r, img))
		}, denialPrefix, []string{"[release]", "signature covers a different artifact"}},
		{"required signer missing", "trust-deny/two/app", func(t *testing.T, img testbed.PushedImage) {
			sign(t, img, k.releaseLeaf, trusttest.JWS, nil)
		}, denialPrefix, []string{"no valid signature from required signer(s) [qa]"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			img := pushTiny(t, b, tc.repo+":v1")
			tc.sign(t, img)
			r := pullIn(t, ctx, b, pg, "trust-deny", "td", img.Ref)
			assertDenial(t, r, tc.prefix, append(tc.want, `for namespace "trust-deny"`, img.Digest)...)
			assertDeniedPullLeftNothing(t, ctx, b, img)
		})
	}
	t.Run("registry unreachable", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t)
		ref := dead + "/gone/app:v1"
		r := pullIn(t, ctx, b, pg, "trust-deny", "td", ref)
		assertDenial(t, r, registryUnavailable, `for namespace "trust-deny"`, dead)
		if strings.Contains(r.Output(), denialPrefix) {
			t.Errorf("an unreachable registry is not a signature failure:\n%s", r.Output())
		}
		assertAbsent(t, ctx, b, ref)
	})
}

// closedLoopbackHost is 127.0.0.1:PORT with nothing listening on it.
func closedLoopbackHost(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close()
	return host
}

// TestTrustRegistryTimeout: a registry that accepts connections and never answers denies with
// RegistryUnavailable once the decision's time is up, and pullguard keeps serving.
func TestTrustRegistryTimeout(t *testing.T) {
	t.Parallel()
	b := sharedBed(t)
	ctx := testCtx(t)
	k := newSigningKit(t)
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(hang) }) // runs first: lets the handlers return so Close can finish
	host := strings.TrimPrefix(srv.URL, "http://")
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() + "[decision]\ntimeout = \"3s\"\n\n" +
		policyTOML("slow", "trust-slow", entry{name: host + "/*", trust: true})})
	start := time.Now()
	r := pullIn(t, ctx, b, pg, "trust-slow", "slow", host+"/stuck/app:v1")
	took := time.Since(start)
	assertDenial(t, r, registryUnavailable, `for namespace "trust-slow"`, host)
	if took > 25*time.Second {
		t.Errorf("a hanging registry held the pull %s; the decision timeout is 3s", took.Round(time.Second))
	}
	if res := pg.Crictl.Run(ctx, "version"); res.Err != nil {
		t.Errorf("pullguard stopped answering after a registry timeout: %v", res)
	}
}
