package main

import (
	"context"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/pullguard/pullguard/integration/testbed"
	"github.com/pullguard/pullguard/plugin/registry/registrytest"
	"github.com/pullguard/pullguard/plugin/trust/trusttest"
	"github.com/pullguard/pullguard/plugin/va/vatest"
)

// These benchmarks put numbers on what pullguard adds where it decides, against the same
// operation without it, in the same run:
//
//	go test -run '^$' -bench . -benchtime 20x ./integration/bench/
//
// Iterations are interleaved so both sides see the same machine; the reported metrics are
// medians over the iterations, and TestMain prints a summary table at the end. Creates are in
// create_bench_test.go.

// benchPolicy is the policy every benchmark bed uses: images under trust/ need a signature by
// release, under va/ also a signed scan report (by scanner) with nothing above high, and under
// open/ nothing.
type benchPolicy struct {
	release, scanner *trusttest.Leaf
	config           string // TOML for a pullguard on a bed whose registry is host
}

func newBenchPolicy(b *testing.B, host string) *benchPolicy {
	b.Helper()
	releaseCA, scannerCA := trusttest.NewCA(b, "release root"), trusttest.NewCA(b, "scanner root")
	subject := func(cn string) pkix.Name {
		return pkix.Name{Country: []string{"US"}, Province: []string{"WA"}, Organization: []string{"Example"}, CommonName: cn}
	}
	p := &benchPolicy{release: releaseCA.Leaf(b, subject("release")), scanner: scannerCA.Leaf(b, subject("scanner"))}
	p.config = fmt.Sprintf(`
[[signers]]
name = "release"
trust_store = %q
identities = ["*"]
revocation = "skip"

[[signers]]
name = "scanner"
trust_store = %q
identities = ["*"]
revocation = "skip"

[va]
scanner_signers = ["scanner"]
require_signed_report = true
max_severity = "high"

[[policies]]
kind = "ClusterImagePolicy"
name = "bench"
  [[policies.repositories]]
  name = "%[3]s/trust/*"
  [policies.repositories.policy.trust]
  enabled = true
  [[policies.repositories]]
  name = "%[3]s/va/*"
  [policies.repositories.policy.trust]
  enabled = true
  [policies.repositories.policy.va]
  enabled = true
  [[policies.repositories]]
  name = "%[3]s/open/*"
`, trusttest.WriteStore(b, releaseCA), trusttest.WriteStore(b, scannerCA), host)
	return p
}

// pullBed is a real registry + containerd + pullguard (pull-only: pulls are what is measured)
// with the benchmark policy.
type pullBed struct {
	bed     *testbed.Bed
	policy  *benchPolicy
	pg      *testbed.Pullguard
	direct  *testbed.CRIClient
	proxied *testbed.CRIClient
	// relayed goes through a process that only copies bytes to containerd:
	// the floor of any extra hop, measured in the same run.
	relayed *testbed.CRIClient
}

func newPullBed(b *testing.B) *pullBed {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bed, err := testbed.Start(ctx, testbed.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		b.Fatalf("test bed: %v", err)
	}
	b.Cleanup(func() { _ = bed.Close(context.Background()) })
	d := &pullBed{bed: bed, policy: newBenchPolicy(b, bed.Registry.Host)}
	if d.pg, err = bed.StartPullguard(ctx, testbed.PullguardOptions{Config: d.policy.config}); err != nil {
		b.Fatalf("pullguard: %v", err)
	}
	if d.direct, err = testbed.DialCRI(bed.Containerd.Socket); err != nil {
		b.Fatal(err)
	}
	noteRuntime(b, d.direct)
	if d.proxied, err = testbed.DialCRI(d.pg.Socket); err != nil {
		b.Fatal(err)
	}
	relaySock, _, stopRelay, err := startRelay(ctx, b.TempDir(), bed.Containerd.Socket)
	if err != nil {
		b.Fatal(err)
	}
	if d.relayed, err = testbed.DialCRI(relaySock); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.direct.Close(); d.proxied.Close(); d.relayed.Close(); stopRelay() })
	return d
}

// noteRuntime records the containerd version for the summary.
func noteRuntime(b *testing.B, c *testbed.CRIClient) {
	b.Helper()
	v, err := c.Runtime.Version(context.Background(), &runtimeapi.VersionRequest{})
	if err != nil {
		b.Fatalf("CRI Version: %v", err)
	}
	runtimeName = v.RuntimeName + " " + v.RuntimeVersion
}

// push pushes a distinct tiny image to repo:tag on bed's registry, signed by release, with a
// signed scan report of findings low-severity findings when findings > 0.
func (p *benchPolicy) push(b *testing.B, bed *testbed.Bed, repo, tag string, findings int) testbed.PushedImage {
	b.Helper()
	ctx := context.Background()
	img, err := testbed.TinyImage(repo + ":" + tag)
	if err != nil {
		b.Fatal(err)
	}
	pushed, err := bed.Registry.Push(ctx, repo+":"+tag, img)
	if err != nil {
		b.Fatal(err)
	}
	r, err := testbed.RepoClient(bed.Registry.Host, repo, nil)
	if err != nil {
		b.Fatal(err)
	}
	desc, err := r.Resolve(ctx, pushed.Digest)
	if err != nil {
		b.Fatal(err)
	}
	trusttest.Sign(b, r, desc, p.release, trusttest.JWS)
	if findings > 0 {
		vulns := make([]vatest.Vuln, findings)
		for i := range vulns {
			vulns[i] = vatest.Vuln{ID: fmt.Sprintf("CVE-2024-%05d", i), Severity: "LOW", Score: 2.0, Package: fmt.Sprintf("pkg%d", i), Installed: "1.0", Fixed: "1.1"}
		}
		now := time.Now()
		report := vatest.TrivySARIF(vatest.Scan{ScannerVersion: "0.58.1", Created: now, Image: pushed.Pinned(), Vulns: vulns})
		rd := registrytest.PushArtifact(b, r, ocispec.Descriptor{MediaType: desc.MediaType, Digest: digest.Digest(pushed.Digest), Size: desc.Size},
			"application/sarif+json", "application/sarif+json", report,
			map[string]string{"org.opencontainers.image.created": now.UTC().Format(time.RFC3339)})
		trusttest.Sign(b, r, rd, p.scanner, trusttest.JWS)
	}
	return pushed
}

// benchSandbox is the pod every pull and create of the benchmarks is made for.
func benchSandbox(name string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "bench", Uid: name}}
}

// pull pulls ref over image for the bench pod and returns how long it took and the image ID.
func pull(b *testing.B, image runtimeapi.ImageServiceClient, ref string) (time.Duration, string) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	resp, err := image.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}, SandboxConfig: benchSandbox("bench")})
	if err != nil {
		b.Fatalf("pull %s: %v", ref, err)
	}
	return time.Since(start), resp.ImageRef
}

func pullTime(b *testing.B, image runtimeapi.ImageServiceClient, ref string) time.Duration {
	b.Helper()
	took, _ := pull(b, image, ref)
	return took
}

// fetchTag times one GET of a manifest by tag, body read: what resolving a
// tag costs pullguard's decision.
func fetchTag(b *testing.B, repo *remote.Repository, tag string) time.Duration {
	b.Helper()
	start := time.Now()
	_, rc, err := repo.FetchReference(context.Background(), tag)
	if err != nil {
		b.Fatalf("fetch %s: %v", tag, err)
	}
	_, err = io.Copy(io.Discard, rc)
	_ = rc.Close()
	if err != nil {
		b.Fatalf("read manifest %s: %v", tag, err)
	}
	return time.Since(start)
}

// reportPull reports a pull benchmark's medians and adds its summary row.
func reportPull(b *testing.B, what string, direct, guarded, relayed []time.Duration, target time.Duration) {
	b.Helper()
	md, mg := median(direct), median(guarded)
	added := mg - md
	b.ReportMetric(float64(md.Microseconds())/1000, "direct-ms")
	b.ReportMetric(float64(mg.Microseconds())/1000, "pullguard-ms")
	b.ReportMetric(float64(added.Microseconds())/1000, "added-ms")
	row := summaryRow{what: what, reference: "direct pull", ref: md, meas: mg, paired: pairedAdded(direct, guarded), target: verdict(added, target, "medians")}
	relay := ""
	if len(relayed) > 0 {
		mr := median(relayed)
		b.ReportMetric(float64((mr-md).Microseconds())/1000, "relay-added-ms")
		row.floor = "byte relay " + signed(pairedAdded(direct, relayed)) + " paired"
		relay = fmt.Sprintf("; through a byte relay %v, added %v (the floor of any extra hop, now); paired: pullguard %v, relay %v",
			mr, mr-md, pairedAdded(direct, guarded), pairedAdded(direct, relayed))
	}
	b.Logf("median direct %v, through pullguard %v, added %v (target <= %v)%s", md, mg, added, target, relay)
	runSummary.set(b.Name(), row)
}

// BenchmarkPull: verified pull (one signature) vs direct pull of a same-sized
// image, cold (nothing cached anywhere) and warm (pulled before: containerd
// has the content, pullguard the facts); target <= 30 ms added cold and
// <= 1 ms added warm. With va: one signed report of 500 findings; target
// <= 40 ms added cold.
func BenchmarkPull(b *testing.B) {
	if testing.Short() {
		b.Skip("needs containerd and a registry")
	}
	d := newPullBed(b)
	for _, tc := range []struct {
		name     string
		what     string
		repo     string
		findings int
		cold     time.Duration
	}{
		{"trust", "verified pull, one signature", "trust", 0, 30 * time.Millisecond},
		{"trust-va500", "verified pull with VA (one signed report of 500 findings)", "va", 500, 40 * time.Millisecond},
	} {
		b.Run(tc.name+"/cold", func(b *testing.B) {
			// Each iteration pulls images nobody pulled before; pushing them is not timed.
			var direct, guarded []time.Duration
			order := iterationOrder()
			for i := 0; b.Loop(); i++ {
				directRef := d.policy.push(b, d.bed, fmt.Sprintf("open/%s-direct-%d", tc.name, i), "v1", tc.findings).Ref
				guardedRef := d.policy.push(b, d.bed, fmt.Sprintf("%s/cold-%d", tc.repo, i), "v1", tc.findings).Ref
				var took [2]time.Duration
				for _, j := range order(2) {
					if j == 0 {
						took[j] = pullTime(b, d.direct.Image, directRef)
					} else {
						took[j] = pullTime(b, d.proxied.Image, guardedRef)
					}
				}
				direct, guarded = append(direct, took[0]), append(guarded, took[1])
			}
			reportPull(b, tc.what+", cold (nothing cached)", direct, guarded, nil, tc.cold)
		})
		b.Run(tc.name+"/warm", func(b *testing.B) {
			ref := d.policy.push(b, d.bed, tc.repo+"/warm", "v1", tc.findings).Ref
			openRef := d.policy.push(b, d.bed, "open/"+tc.name+"-warm", "v1", tc.findings).Ref
			pull(b, d.proxied.Image, ref)
			pull(b, d.direct.Image, openRef)
			repo, err := testbed.RepoClient(d.bed.Registry.Host, tc.repo+"/warm", nil)
			if err != nil {
				b.Fatal(err)
			}
			var direct, guarded, relayed, resolves []time.Duration
			order := iterationOrder()
			for b.Loop() {
				var took [3]time.Duration
				for _, j := range order(3) {
					switch j {
					case 0:
						took[j] = pullTime(b, d.direct.Image, openRef)
					case 1:
						took[j] = pullTime(b, d.proxied.Image, ref)
					case 2:
						took[j] = pullTime(b, d.relayed.Image, openRef)
					}
				}
				direct, guarded, relayed = append(direct, took[0]), append(guarded, took[1]), append(relayed, took[2])
				resolves = append(resolves, fetchTag(b, repo, "v1"))
			}
			reportPull(b, tc.what+", warm (facts cached, content present)", direct, guarded, relayed, time.Millisecond)
			// Pinning what is pulled to what was verified costs one manifest
			// fetch by tag that a direct pull does not make.
			b.Logf("one manifest fetch by tag from this registry, as the decision makes it: median %v", median(resolves))
			runSummary.set(b.Name()+"/resolve", summaryRow{what: "one manifest fetch by tag from the same registry, timed beside the warm pull above (what pinning it costs the decision)", meas: median(resolves)})
			lines := d.pg.LogLines(`"op":"pull"`, tc.repo+"/warm")
			if len(lines) > 0 {
				b.Log(lines[len(lines)-1])
			}
		})
	}
}
