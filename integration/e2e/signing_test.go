package e2e

import (
	"context"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/pullguard/pullguard/integration/testbed"
	"github.com/pullguard/pullguard/plugin/trust/trusttest"
)

// Helpers shared by the trust, VA and bypass suites: a test PKI whose leaves satisfy notation,
// signing images in the bed's registries with notation-go (trusttest) as a release pipeline
// would, and policies with signers and VA knobs in pullguard's TOML.

// subject is a leaf subject notation accepts as a trusted identity (C, ST and O are required).
func subject(cn string) pkix.Name {
	return pkix.Name{Country: []string{"US"}, Province: []string{"WA"}, Organization: []string{"Example"}, CommonName: cn}
}

func identity(cn string) string { return "x509.subject: C=US, ST=WA, O=Example, CN=" + cn }

// signingKit holds the CAs of the signers pullguard is configured with (release, qa, and the
// scanner that vouches for reports) and one the node does not trust (rogue).
type signingKit struct {
	release, qa, scanner, rogue                 *trusttest.CA
	releaseLeaf, qaLeaf, scannerLeaf, rogueLeaf *trusttest.Leaf
	stores                                      map[string]string // signer name -> trust store dir
}

func newSigningKit(t *testing.T) *signingKit {
	t.Helper()
	k := &signingKit{
		release: trusttest.NewCA(t, "release root"), qa: trusttest.NewCA(t, "qa root"),
		scanner: trusttest.NewCA(t, "scanner root"), rogue: trusttest.NewCA(t, "rogue root"),
	}
	k.releaseLeaf = k.release.Leaf(t, subject("release"))
	k.qaLeaf = k.qa.Leaf(t, subject("qa"))
	k.scannerLeaf = k.scanner.Leaf(t, subject("scanner"))
	// Same subject as the release signer: only the chain tells them apart.
	k.rogueLeaf = k.rogue.Leaf(t, subject("release"))
	k.stores = map[string]string{
		"release": trusttest.WriteStore(t, k.release),
		"qa":      trusttest.WriteStore(t, k.qa),
		"scanner": trusttest.WriteStore(t, k.scanner),
	}
	return k
}

// configTOML declares the kit's signers (revocation skipped: the test leaves name no OCSP or
// CRL service) and node VA defaults that accept reports signed by the scanner signer.
func (k *signingKit) configTOML() string {
	var b strings.Builder
	for _, name := range []string{"release", "qa", "scanner"} {
		fmt.Fprintf(&b, "[[signers]]\nname = %q\ntrust_store = %q\nidentities = [%q]\nrevocation = \"skip\"\n\n", name, k.stores[name], identity(name))
	}
	b.WriteString("[va]\nmax_severity = \"high\"\nunscanned = \"deny\"\nmax_report_age = \"720h\"\nrequire_signed_report = true\nscanner_signers = [\"scanner\"]\n\n")
	return b.String()
}

// entry is one repositories entry of a policy in TOML.
type entry struct {
	name    string
	trust   bool
	signers []string
	va      *vaKnobs
	// running and evictAfter: what happens to a running container no longer admitted.
	running, evictAfter string
}

type vaKnobs struct {
	maxSeverity, unscanned, maxReportAge string
	requireSigned                        *bool
	allow                                []exemption
}

type exemption struct{ id, expires string }

// policyTOML renders a [[policies]] table; ns "" makes a ClusterImagePolicy.
func policyTOML(name, ns string, entries ...entry) string {
	var b strings.Builder
	b.WriteString("[[policies]]\n")
	if ns == "" {
		fmt.Fprintf(&b, "kind = \"ClusterImagePolicy\"\nname = %q\n", name)
	} else {
		fmt.Fprintf(&b, "kind = \"ImagePolicy\"\nname = %q\nnamespace = %q\n", name, ns)
	}
	for _, e := range entries {
		fmt.Fprintf(&b, "  [[policies.repositories]]\n  name = %q\n", e.name)
		if e.running != "" {
			fmt.Fprintf(&b, "  running = %q\n", e.running)
		}
		if e.evictAfter != "" {
			fmt.Fprintf(&b, "  evict_after = %q\n", e.evictAfter)
		}
		if e.trust {
			b.WriteString("    [policies.repositories.policy.trust]\n    enabled = true\n")
			if len(e.signers) > 0 {
				q := make([]string, len(e.signers))
				for i, s := range e.signers {
					q[i] = fmt.Sprintf("%q", s)
				}
				fmt.Fprintf(&b, "    signers = [%s]\n", strings.Join(q, ", "))
			}
		}
		if v := e.va; v != nil {
			b.WriteString("    [policies.repositories.policy.va]\n    enabled = true\n")
			for key, val := range map[string]string{"max_severity": v.maxSeverity, "unscanned": v.unscanned, "max_report_age": v.maxReportAge} {
				if val != "" {
					fmt.Fprintf(&b, "    %s = %q\n", key, val)
				}
			}
			if v.requireSigned != nil {
				fmt.Fprintf(&b, "    require_signed_report = %t\n", *v.requireSigned)
			}
			for _, a := range v.allow {
				fmt.Fprintf(&b, "      [[policies.repositories.policy.va.allow]]\n      id = %q\n", a.id)
				if a.expires != "" {
					fmt.Fprintf(&b, "      expires = %q\n", a.expires)
				}
			}
		}
	}
	return b.String() + "\n"
}

// repoOf splits HOST/repo:tag (or HOST/repo@digest) into host and repository.
func repoOf(t *testing.T, ref string) (host, repo string) {
	t.Helper()
	if i := strings.LastIndex(ref, "@"); i >= 0 {
		ref = ref[:i]
	} else if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	host, repo, ok := strings.Cut(ref, "/")
	if !ok {
		t.Fatalf("no repository in %q", ref)
	}
	return host, repo
}

// repoClient is an oras-go client for img's repository (user: the registry's credentials).
func repoClient(t *testing.T, ref string, user *testbed.BasicAuth) *remote.Repository {
	t.Helper()
	host, repo := repoOf(t, ref)
	r, err := testbed.RepoClient(host, repo, user)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// describe returns the manifest descriptor of img as the registry serves it.
func describe(t *testing.T, r *remote.Repository, img testbed.PushedImage) ocispec.Descriptor {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := r.Resolve(ctx, img.Digest)
	if err != nil {
		t.Fatalf("resolve %s: %v", img.Pinned(), err)
	}
	return d
}

// sign signs img (in its registry) with leaf, as `notation sign` does.
func sign(t *testing.T, img testbed.PushedImage, leaf *trusttest.Leaf, mediaType string, user *testbed.BasicAuth) {
	t.Helper()
	r := repoClient(t, img.Ref, user)
	trusttest.Sign(t, r, describe(t, r, img), leaf, mediaType)
}

// tamperJWS flips bits in the signature of a JWS JSON envelope, leaving it well-formed.
func tamperJWS(t *testing.T, env []byte) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(env, &m); err != nil {
		t.Fatalf("envelope is not JWS JSON: %v", err)
	}
	s, _ := m["signature"].(string)
	sig, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(sig) == 0 {
		t.Fatalf("envelope signature %q: %v", s, err)
	}
	sig[len(sig)/2] ^= 0xff
	m["signature"] = base64.RawURLEncoding.EncodeToString(sig)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// pullIn pulls ref through pg for a pod of namespace ns (as kubelet does, with the sandbox
// config); extra goes before the image (e.g. --creds).
func pullIn(t *testing.T, ctx context.Context, b *testbed.Bed, pg *testbed.Pullguard, ns, pod, ref string, extra ...string) testbed.Result {
	t.Helper()
	args := append([]string{"pull", "--pod-config", podConfig(t, b, pod, ns)}, extra...)
	return pg.Crictl.Run(ctx, append(args, ref)...)
}

// assertDenial checks a crictl result is a failure whose output carries prefix and every want.
func assertDenial(t *testing.T, r testbed.Result, prefix string, wants ...string) {
	t.Helper()
	if r.Err == nil {
		t.Fatalf("admitted, want a denial (%s %v):\n%v", prefix, wants, r)
	}
	// crictl quotes the gRPC message in its log lines: compare the message as sent.
	out := strings.ReplaceAll(r.Output(), `\"`, `"`)
	if !strings.Contains(out, prefix) {
		t.Errorf("denial lacks %q:\n%s", prefix, out)
	}
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("denial lacks %q:\n%s", w, out)
		}
	}
}

// pushRunnable pushes a busybox image unique to the test (its marker is the test name).
func pushRunnable(t *testing.T, b *testbed.Bed, repoTag string) testbed.PushedImage {
	t.Helper()
	img, err := testbed.RunnableImage(b.Tools.Busybox, t.Name()+" "+repoTag)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := b.Registry.Push(ctx, repoTag, img)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// pushTinyTo pushes a small image unique to the test to reg (any registry the test runs).
func pushTinyTo(t *testing.T, reg *testbed.Registry, repoTag string) testbed.PushedImage {
	t.Helper()
	img, err := testbed.TinyImage(t.Name() + " " + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := reg.Push(ctx, repoTag, img)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// base64Basic is the basic-auth encoding of user:password (also must never be logged).
func base64Basic(user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
}

// assertDigestAbsent checks no image in containerd (asked with ctr) has manifest digest dig,
// under any name: what a denied pull must leave behind.
func assertDigestAbsent(t *testing.T, ctx context.Context, b *testbed.Bed, dig string) {
	t.Helper()
	r := b.Ctr(ctx, "images", "ls")
	if r.Err != nil {
		t.Fatalf("list images: %v", r)
	}
	if strings.Contains(r.Stdout, dig) {
		t.Errorf("containerd holds an image with digest %s:\n%s", dig, r.Stdout)
	}
}

// assertDeniedPullLeftNothing is assertAbsent plus no image of that digest under any name.
func assertDeniedPullLeftNothing(t *testing.T, ctx context.Context, b *testbed.Bed, img testbed.PushedImage) {
	t.Helper()
	assertAbsent(t, ctx, b, img.Ref)
	assertDigestAbsent(t, ctx, b, img.Digest)
}
