package enforce

import (
	"context"
	"crypto/x509/pkix"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pullguard/pullguard/plugin/cache"
	"github.com/pullguard/pullguard/plugin/policy"
	"github.com/pullguard/pullguard/plugin/registry"
	"github.com/pullguard/pullguard/plugin/registry/registrytest"
	"github.com/pullguard/pullguard/plugin/trust"
	"github.com/pullguard/pullguard/plugin/trust/trusttest"
)

// trustBed is a real in-process registry with images signed by real
// notation envelopes, and an engine verifying against two signers.
type trustBed struct {
	srv      *registrytest.Server
	requests atomic.Int64
	release  *trusttest.CA
	qa       *trusttest.CA
	rogue    *trusttest.CA
	reg      *registry.Client
	verifier *trust.Verifier
}

func newTrustBed(t testing.TB) *trustBed {
	t.Helper()
	b := &trustBed{
		release: trusttest.NewCA(t, "release root"),
		qa:      trusttest.NewCA(t, "qa root"),
		rogue:   trusttest.NewCA(t, "rogue root"),
	}
	b.srv = registrytest.Start(t, registrytest.Config{Referrers: true, Wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.requests.Add(1)
			h.ServeHTTP(w, r)
		})
	}})
	signers, err := trust.LoadSigners([]trust.Signer{
		{Name: "release", TrustStoreDir: trusttest.WriteStore(t, b.release), Identities: []string{"*"}, Revocation: trust.RevocationSkip},
		{Name: "qa", TrustStoreDir: trusttest.WriteStore(t, b.qa), Identities: []string{"*"}, Revocation: trust.RevocationSkip},
	})
	if err != nil {
		t.Fatal(err)
	}
	b.reg, err = registry.New(registry.Options{PlainHTTP: []string{b.srv.Host}, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	b.verifier, err = trust.NewVerifier(trust.Options{Signers: signers, Registry: b.reg})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// push pushes an image to repo:tag signed by the given CAs' leaves.
func (b *trustBed) push(t testing.TB, repo, tag string, signers ...*trusttest.CA) string {
	t.Helper()
	r := b.srv.Repo(t, repo)
	desc := registrytest.PushImage(t, r, tag)
	for _, ca := range signers {
		leaf := ca.Leaf(t, pkix.Name{Country: []string{"US"}, Province: []string{"WA"}, Organization: []string{"Example"}, CommonName: "signer"})
		trusttest.Sign(t, r, desc, leaf, trusttest.JWS)
	}
	return desc.Digest.String()
}

func (b *trustBed) engine(t *testing.T, facts FactsCache, pols ...policy.Policy) *Engine {
	t.Helper()
	return New(mustSet(t, pols...), Options{Registry: b.reg, Trust: b.verifier, Facts: facts, Timeout: 10 * time.Second})
}

func trustRule(name string, signers ...string) policy.Rule {
	return policy.Rule{Name: name, Checks: policy.Checks{Trust: policy.Trust{Enabled: true, Signers: signers}}}
}

func TestTrustDecisions(t *testing.T) {
	b := newTrustBed(t)
	host := b.srv.Host
	signedRelease := b.push(t, "app/signed", "v1", b.release)
	b.push(t, "app/both", "v1", b.release, b.qa)
	b.push(t, "app/unsigned", "v1")
	b.push(t, "app/rogue", "v1", b.rogue)

	tests := []struct {
		name     string
		rule     policy.Rule
		image    string
		verdict  Verdict
		category Category
		msgHas   []string
	}{
		{"any configured signer admits", trustRule("*"), host + "/app/signed:v1", Admit, "", nil},
		{"required signer present admits", trustRule("*", "release"), host + "/app/signed:v1", Admit, "", nil},
		{"every required signer present admits", trustRule("*", "release", "qa"), host + "/app/both:v1", Admit, "", nil},
		{"one required signer missing denies and is named", trustRule("*", "release", "qa"), host + "/app/signed:v1", Deny, SignatureValidationFailed, []string{"qa"}},
		{"unsigned image denies", trustRule("*"), host + "/app/unsigned:v1", Deny, SignatureValidationFailed, []string{"SignatureValidationFailed: "}},
		{"untrusted signer denies", trustRule("*"), host + "/app/rogue:v1", Deny, SignatureValidationFailed, []string{"untrusted"}},
		{"pull by digest is checked like a tag", trustRule("*"), host + "/app/signed@" + signedRelease, Admit, "", nil},
		{"image absent from the registry denies", trustRule("*"), host + "/app/missing:v1", Deny, SignatureValidationFailed, []string{"not found"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := b.engine(t, nil, cluster(tc.rule))
			d := e.Decide(context.Background(), Request{Op: OpPull, Namespace: "prod", Image: tc.image})
			if d.Verdict != tc.verdict || d.Category != tc.category {
				t.Fatalf("got %s/%q, want %s/%q: %s", d.Verdict, d.Category, tc.verdict, tc.category, d.Message())
			}
			for _, want := range tc.msgHas {
				if !strings.Contains(d.Message(), want) {
					t.Errorf("message %q lacks %q", d.Message(), want)
				}
			}
			if tc.verdict == Admit {
				if !strings.HasPrefix(d.Digest, "sha256:") || !strings.HasSuffix(d.PinnedRef, "@"+d.Digest) {
					t.Errorf("admitted without pinning: digest %q pinned %q", d.Digest, d.PinnedRef)
				}
			}
		})
	}
}

func TestTrustRegistryDownFailsClosedOrOpenAsConfigured(t *testing.T) {
	b := newTrustBed(t)
	image := b.srv.Host + "/app/signed:v1"
	b.push(t, "app/signed", "v1", b.release)
	b.srv.Close()

	d := b.engine(t, nil, cluster(trustRule("*"))).Decide(context.Background(), Request{Namespace: "prod", Image: image})
	if !d.Denied() || d.Category != RegistryUnavailable || !strings.HasPrefix(d.Message(), "RegistryUnavailable: ") {
		t.Fatalf("registry down: %s %q", d.Verdict, d.Message())
	}

	open := trustRule("*")
	open.FailOpen = true
	d = b.engine(t, nil, cluster(open)).Decide(context.Background(), Request{Namespace: "prod", Image: image})
	if d.Denied() || !d.FailedOpen {
		t.Fatalf("fail_open rule: verdict %s failedOpen=%v", d.Verdict, d.FailedOpen)
	}
}

func TestTrustFactsAreCachedByDigestNotTag(t *testing.T) {
	b := newTrustBed(t)
	b.push(t, "app/signed", "v1", b.release)
	facts := cache.New[*Facts](cache.Options{})
	e := b.engine(t, facts, cluster(trustRule("*")))
	image := b.srv.Host + "/app/signed:v1"

	if d := e.Decide(context.Background(), Request{Image: image}); d.Denied() {
		t.Fatal(d.Message())
	}
	before := b.requests.Load()
	if d := e.Decide(context.Background(), Request{Image: image}); d.Denied() {
		t.Fatal(d.Message())
	}
	// Only the tag is resolved again; signatures come from the cache.
	if extra := b.requests.Load() - before; extra > 1 {
		t.Errorf("cached decision made %d registry requests, want at most 1 (resolve)", extra)
	}

	// The tag moves to an unsigned image: the cache must not vouch for it.
	b.push(t, "app/signed", "v1")
	if d := e.Decide(context.Background(), Request{Image: image}); !d.Denied() {
		t.Fatal("moved tag admitted from cached facts of the old digest")
	}
}

func TestCreateDecidesOnTheNodesContent(t *testing.T) {
	b := newTrustBed(t)
	signed := b.push(t, "app/web", "v1", b.release)
	facts := cache.New[*Facts](cache.Options{})
	e := b.engine(t, facts, cluster(trustRule("*")))
	image := b.srv.Host + "/app/web:v1"

	// The pull verified and cached the facts: the create needs no registry.
	if d := e.Decide(context.Background(), Request{Op: OpPull, Image: image}); d.Denied() {
		t.Fatal(d.Message())
	}
	before := b.requests.Load()
	if d := e.Decide(context.Background(), Request{Op: OpCreate, Namespace: "prod", Image: image, Digest: signed}); d.Denied() {
		t.Fatal(d.Message())
	}
	if n := b.requests.Load() - before; n != 0 {
		t.Errorf("create with cached facts made %d registry requests", n)
	}

	// The tag now names unsigned content; the node still holds the signed
	// one, and the create is decided on what the node holds.
	unsigned := b.push(t, "app/web", "v1")
	if d := e.Decide(context.Background(), Request{Op: OpCreate, Namespace: "prod", Image: image, Digest: signed}); d.Denied() {
		t.Fatalf("signed content on the node denied after the tag moved: %s", d.Message())
	}
	// And unsigned content on the node is denied even though never pulled
	// through pullguard (imported by hand).
	d := e.Decide(context.Background(), Request{Op: OpCreate, Namespace: "prod", Image: image, Digest: unsigned})
	if !d.Denied() || d.Digest != unsigned {
		t.Fatalf("unsigned content on the node: verdict %s digest %s", d.Verdict, d.Digest)
	}
}

// containerd's CRI also records every image under its ID ("sha256:<config digest>"), for
// images pulled through CRI and for those another client (ctr) brought. That record names no
// repository: it must not be decided as docker.io/library/sha256 (a name nobody meant, whose
// verification would go to Docker Hub and, never succeeding, would hide the real finding as
// "not verified yet" on every retry).
func TestCreateIgnoresContainerdsImageIDRecord(t *testing.T) {
	b := newTrustBed(t)
	unsigned := b.push(t, "app/prepulled", "v1")
	facts := cache.New[*Facts](cache.Options{})
	e := b.engine(t, facts, cluster(trustRule("*")))
	image := b.srv.Host + "/app/prepulled:v1"
	// A verification (here, a pull's) established the facts: no signature.
	if d := e.Decide(context.Background(), Request{Op: OpPull, Image: image}); !d.Denied() {
		t.Fatal("unsigned image admitted at pull")
	}
	id := "sha256:df6463e8579ee137ae6dfddac3b9e01dfa4084d9cabaab5c506713f11aea94bc"
	d := e.DecideNode(context.Background(), NodeRequest{Op: OpCreate, Namespace: "strict", CachedOnly: true, Image: NodeImage{
		ID:   id,
		Refs: []NodeRef{{Name: id, Digest: unsigned}, {Name: image, Digest: unsigned}},
	}})
	if !d.Denied() || d.NotVerified || !strings.Contains(d.Reason, "found no signature") {
		t.Fatalf("want the final denial from the cached facts, got: %s", d.Message())
	}
	if strings.Contains(d.Message(), "docker.io") {
		t.Errorf("the image ID record was decided as a name: %s", d.Message())
	}
}

func TestConcurrentIdenticalPullsVerifyOnce(t *testing.T) {
	b := newTrustBed(t)
	var listings atomic.Int64
	b.push(t, "app/hot", "v1", b.release)
	facts := cache.New[*Facts](cache.Options{})
	counting := &countingVerifier{TrustVerifier: b.verifier, n: &listings}
	e := New(mustSet(t, cluster(trustRule("*"))), Options{Registry: b.reg, Trust: counting, Facts: facts, Timeout: 10 * time.Second})

	const n = 100
	var wg sync.WaitGroup
	denied := atomic.Int64{}
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if d := e.Decide(context.Background(), Request{Op: OpPull, Namespace: "prod", Image: b.srv.Host + "/app/hot:v1"}); d.Denied() {
				denied.Add(1)
			}
		}()
	}
	wg.Wait()
	if denied.Load() != 0 {
		t.Fatalf("%d of %d concurrent pulls denied", denied.Load(), n)
	}
	if got := listings.Load(); got != 1 {
		t.Fatalf("%d verifications for %d identical concurrent pulls, want 1", got, n)
	}
}

// countingVerifier counts real verifications (it sits below the cache).
type countingVerifier struct {
	TrustVerifier
	n *atomic.Int64
}

func (c *countingVerifier) VerifyFrom(ctx context.Context, src trust.SignatureSource, ref reference.Named, desc ocispec.Descriptor) (*trust.Facts, error) {
	c.n.Add(1)
	return c.TrustVerifier.VerifyFrom(ctx, src, ref, desc)
}

// BenchmarkDecidePullCached is the cost pullguard adds to a pull whose
// signatures were verified before: policy match, tag resolution on a
// loopback registry (never cached: tags move), cached facts.
func BenchmarkDecidePullCached(b *testing.B) {
	tb := newTrustBed(b)
	tb.push(b, "app/signed", "v1", tb.release)
	e := New(mustSetB(b, cluster(trustRule("*"))), Options{Registry: tb.reg, Trust: tb.verifier, Facts: cache.New[*Facts](cache.Options{})})
	req := Request{Op: OpPull, Namespace: "prod", Image: tb.srv.Host + "/app/signed:v1"}
	if d := e.Decide(context.Background(), req); d.Denied() {
		b.Fatal(d.Message())
	}
	b.ResetTimer()
	for b.Loop() {
		if d := e.Decide(context.Background(), req); d.Denied() {
			b.Fatal(d.Message())
		}
	}
}

// BenchmarkDecideCreateCached is the engine's share of a CreateContainer
// for an image verified at pull time: no network at all.
func BenchmarkDecideCreateCached(b *testing.B) {
	tb := newTrustBed(b)
	dg := tb.push(b, "app/signed", "v1", tb.release)
	e := New(mustSetB(b, cluster(trustRule("*"))), Options{Registry: tb.reg, Trust: tb.verifier, Facts: cache.New[*Facts](cache.Options{})})
	image := tb.srv.Host + "/app/signed:v1"
	if d := e.Decide(context.Background(), Request{Op: OpPull, Image: image}); d.Denied() {
		b.Fatal(d.Message())
	}
	req := Request{Op: OpCreate, Namespace: "prod", Image: image, Digest: dg}
	b.ResetTimer()
	for b.Loop() {
		if d := e.Decide(context.Background(), req); d.Denied() {
			b.Fatal(d.Message())
		}
	}
}

// BenchmarkDecidePullCold verifies one signature every time (no cache).
func BenchmarkDecidePullCold(b *testing.B) {
	tb := newTrustBed(b)
	tb.push(b, "app/signed", "v1", tb.release)
	e := New(mustSetB(b, cluster(trustRule("*"))), Options{Registry: tb.reg, Trust: tb.verifier})
	req := Request{Op: OpPull, Namespace: "prod", Image: tb.srv.Host + "/app/signed:v1"}
	for b.Loop() {
		if d := e.Decide(context.Background(), req); d.Denied() {
			b.Fatal(d.Message())
		}
	}
}

func mustSetB(b *testing.B, pols ...policy.Policy) *policy.Set {
	s, err := policy.NewSet(pols, policy.ModeEnforce)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func TestCreateUsesNodeCredentialsForPrivateRegistries(t *testing.T) {
	srv := registrytest.Start(t, registrytest.Config{Referrers: true, Username: "node", Password: "node-secret"})
	release := trusttest.NewCA(t, "release root")
	r := srv.Repo(t, "private/app")
	desc := registrytest.PushImage(t, r, "v1")
	trusttest.Sign(t, r, desc, release.Leaf(t, pkix.Name{Country: []string{"US"}, Province: []string{"WA"}, Organization: []string{"Example"}, CommonName: "release"}), trusttest.JWS)

	signers, err := trust.LoadSigners([]trust.Signer{{Name: "release", TrustStoreDir: trusttest.WriteStore(t, release), Identities: []string{"*"}, Revocation: trust.RevocationSkip}})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.New(registry.Options{PlainHTTP: []string{srv.Host}, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	v, err := trust.NewVerifier(trust.Options{Signers: signers, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	node := func(host, repository string) *registry.Credentials {
		if host == srv.Host && repository == "private/app" {
			return &registry.Credentials{Username: "node", Password: "node-secret"}
		}
		return nil
	}
	req := Request{Op: OpCreate, Namespace: "prod", Image: srv.Host + "/private/app:v1", Digest: desc.Digest.String()}

	without := New(mustSet(t, cluster(trustRule("*"))), Options{Registry: reg, Trust: v})
	if d := without.Decide(context.Background(), req); !d.Denied() || !strings.Contains(d.Reason, "refused access") {
		t.Fatalf("without node credentials: %s %q", d.Verdict, d.Reason)
	}
	with := New(mustSet(t, cluster(trustRule("*"))), Options{Registry: reg, Trust: v, NodeCredentials: node})
	if d := with.Decide(context.Background(), req); d.Denied() {
		t.Fatalf("with node credentials: %s", d.Message())
	}
	// The request's own credentials come first: wrong ones are not papered
	// over by the node's.
	req.Credentials = func(string, string) *registry.Credentials {
		return &registry.Credentials{Username: "node", Password: "wrong"}
	}
	if d := with.Decide(context.Background(), req); !d.Denied() {
		t.Fatal("wrong request credentials admitted thanks to the node's")
	}
}
