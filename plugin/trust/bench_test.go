package trust_test

import (
	"context"
	"testing"

	"github.com/pullguard/pullguard/plugin/registry"
	"github.com/pullguard/pullguard/plugin/registry/registrytest"
	"github.com/pullguard/pullguard/plugin/trust"
	"github.com/pullguard/pullguard/plugin/trust/trusttest"
)

// BenchmarkResolveAndVerify measures what trust adds to a pull: resolve the
// tag, list referrers, fetch and verify one signature, on loopback, with
// nothing cached (a new Repository, hence a new token cache, per iteration).
func BenchmarkResolveAndVerify(b *testing.B) {
	for _, tc := range []struct {
		name      string
		referrers bool
		envelope  string
	}{{"referrersAPI/JWS", true, trusttest.JWS}, {"referrersAPI/COSE", true, trusttest.COSE}, {"tagSchema/JWS", false, trusttest.JWS}} {
		b.Run(tc.name, func(b *testing.B) {
			ca := trusttest.NewCA(b, "release root")
			signer, err := trust.LoadSigner(trust.Signer{Name: "release", TrustStoreDir: trusttest.WriteStore(b, ca), Identities: []string{"*"}, Revocation: trust.RevocationSkip})
			if err != nil {
				b.Fatal(err)
			}
			srv := registrytest.Start(b, registrytest.Config{Referrers: tc.referrers})
			repo := srv.Repo(b, "app")
			img := registrytest.PushImage(b, repo, "v1")
			trusttest.Sign(b, repo, img, ca.Leaf(b, trusttestSubject()), tc.envelope)
			reg, err := registry.New(registry.Options{})
			if err != nil {
				b.Fatal(err)
			}
			v, err := trust.NewVerifier(trust.Options{Signers: []*trust.LoadedSigner{signer}, Registry: reg})
			if err != nil {
				b.Fatal(err)
			}
			ref := repoNameB(b, srv.Host, "app:v1")
			ctx := context.Background()
			b.ResetTimer()
			for b.Loop() {
				r, err := reg.Repository(ctx, ref, nil)
				if err != nil {
					b.Fatal(err)
				}
				desc, err := r.Resolve(ctx, ref)
				if err != nil {
					b.Fatal(err)
				}
				facts, err := v.VerifyFrom(ctx, r, ref, desc)
				if err != nil || !facts.Verified("release") {
					b.Fatalf("not verified: %v %v", err, facts)
				}
			}
		})
	}
}
