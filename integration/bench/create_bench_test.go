package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullguard/pullguard/integration/testbed"
)

// Creates are decided inside containerd: its NRI default validator requires a plugin named
// "pullguard", and pullguard's plugin decides every create from facts it already holds. What that
// costs is measured against the same create on containerds configured otherwise, all in one run:
//
//	pullguard  NRI requiring "pullguard", pullguard's plugin registered (facts cached: the
//	           image was pulled through pullguard first)
//	trivial    NRI requiring "pullguard", a plugin of that name admitting every create at once
//	           (nristub.go): the floor of any required validator
//	nri        NRI on, default validator off, no plugin: containerd's own default
//	nri-off    NRI disabled
//
// Only one plugin named "pullguard" can meaningfully be registered with a containerd at a time,
// so pullguard and the trivial validator get a containerd each, and every iteration creates on
// all four containerds back to back, in a random order (see iterationOrder), so that drift hits
// them alike. Two
// containerds configured alike can still differ a little, so pullguard and the trivial validator
// swap containerds every -create-block iterations: each side is measured on both, the target is
// judged on an estimate that cancels the difference, and the difference is logged.

var (
	createBlock = flag.Int("create-block", 25, "BenchmarkCreate: iterations before pullguard and the trivial validator swap containerds")
	coldRetry   = flag.Duration("cold-retry", 5*time.Millisecond, "BenchmarkCreate/cold: how soon a refused create is retried")
)

// gateTarget is one containerd creates are timed on, with a pod sandbox to create in.
type gateTarget struct {
	name   string
	ctd    *testbed.Containerd
	cri    *testbed.CRIClient
	podID  string
	podCfg *runtimeapi.PodSandboxConfig
}

// gatedCtd is a containerd whose NRI requires "pullguard": either its pullguard or the trivial
// validator is registered.
type gatedCtd struct {
	gateTarget
	pg       *testbed.Pullguard
	stopStub func() // nil while the trivial validator is not running
}

type createBed struct {
	bed     *testbed.Bed
	policy  *benchPolicy
	image   testbed.PushedImage // signed; pulled through pullguard on the gated containerds
	imageID string
	gated   [2]*gatedCtd
	none    *gateTarget
	off     *gateTarget
	active  int // gated[active] has pullguard registered, the other the trivial validator
}

func newCreateBed(b *testing.B) *createBed {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bed, err := testbed.Start(ctx, testbed.Options{NRI: true, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		b.Fatalf("test bed: %v", err)
	}
	c := &createBed{bed: bed, policy: newBenchPolicy(b, bed.Registry.Host)}
	b.Cleanup(func() {
		for _, g := range c.gated {
			if g != nil && g.stopStub != nil {
				g.stopStub()
			}
		}
		if err := bed.Close(context.Background()); err != nil {
			b.Errorf("close test bed: %v", err)
		}
	})
	target := func(name string, ctd *testbed.Containerd) *gateTarget {
		cri, err := testbed.DialCRI(ctd.Socket)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cri.Close() })
		return &gateTarget{name: name, ctd: ctd, cri: cri}
	}
	add := func(name string, opts testbed.ContainerdOptions) *gateTarget {
		ctd, _, err := bed.AddContainerd(ctx, name, opts)
		if err != nil {
			b.Fatalf("containerd %s: %v", name, err)
		}
		return target(name, ctd)
	}
	c.gated[0] = &gatedCtd{gateTarget: *target("gate1", bed.Containerd)}
	c.gated[1] = &gatedCtd{gateTarget: *add("gate2", testbed.ContainerdOptions{})}
	c.none = add("nri", testbed.ContainerdOptions{NRINoValidator: true})
	c.off = add("nrioff", testbed.ContainerdOptions{NoNRI: true})
	noteRuntime(b, c.none.cri)

	// Sandboxes first: no plugin is registered yet, and NRI validates containers, not sandboxes.
	for _, t := range c.targets() {
		t.runSandbox(b, ctx, bed.CgroupParent)
	}
	c.image = c.policy.push(b, bed, "trust/create", "v1", 0)
	for _, t := range []*gateTarget{c.none, c.off} {
		if _, c.imageID = pull(b, t.cri.Image, c.image.Ref); c.imageID != c.image.ID {
			b.Fatalf("pulled %s as %s, want %s", c.image.Ref, c.imageID, c.image.ID)
		}
	}
	for i := range c.gated {
		g := c.gated[i]
		opts := testbed.PullguardOptions{Config: c.policy.config}
		if i > 0 {
			opts.Containerd = g.ctd
		}
		if g.pg, err = bed.StartPullguard(ctx, opts); err != nil {
			b.Fatalf("pullguard on %s: %v", g.name, err)
		}
		c.pullThroughPullguard(b, g)
	}
	// pullguard stays on gated[0]; gated[1] gets the trivial validator.
	if err := c.gated[1].pg.Stop(); err != nil {
		b.Fatal(err)
	}
	if c.gated[1].stopStub, err = startNRIStub(ctx, c.gated[1].ctd.NRISocket); err != nil {
		b.Fatal(err)
	}
	c.warmup(b)
	return c
}

// targets are the four containerds in a fixed order: pullguard, trivial, nri, nri-off.
func (c *createBed) targets() []*gateTarget {
	return []*gateTarget{&c.gated[c.active].gateTarget, &c.gated[1-c.active].gateTarget, c.none, c.off}
}

var targetNames = []string{"pullguard", "trivial", "nri", "nri-off"}

// pullThroughPullguard pulls the create image through g's pullguard, which verifies it and caches
// the facts, as kubelet's pull before the create does.
func (c *createBed) pullThroughPullguard(b *testing.B, g *gatedCtd) {
	b.Helper()
	image, err := testbed.DialCRI(g.pg.Socket)
	if err != nil {
		b.Fatal(err)
	}
	defer image.Close()
	if _, id := pull(b, image.Image, c.image.Ref); id != c.image.ID {
		b.Fatalf("pulled %s through pullguard as %s, want %s", c.image.Ref, id, c.image.ID)
	}
}

// swap moves pullguard to the containerd the trivial validator was on, and the trivial validator
// to the other.
func (c *createBed) swap(b *testing.B) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	from, to := c.gated[c.active], c.gated[1-c.active]
	if err := from.pg.Stop(); err != nil {
		b.Fatal(err)
	}
	to.stopStub()
	to.stopStub = nil
	var err error
	if from.stopStub, err = startNRIStub(ctx, from.ctd.NRISocket); err != nil {
		b.Fatal(err)
	}
	if err := to.pg.Start(ctx); err != nil {
		b.Fatal(err)
	}
	// A restarted pullguard holds no facts: the pull establishes them again.
	c.pullThroughPullguard(b, to)
	c.active = 1 - c.active
	c.warmup(b)
}

// warmup creates on every containerd a few times, untimed. A containerd may notice that the
// plugin it had before is gone only at its next call to it, which fails that create: a failure
// here is retried a few times before it counts.
func (c *createBed) warmup(b *testing.B) {
	b.Helper()
	ctx := context.Background()
	for i := range 3 {
		for _, t := range c.targets() {
			var err error
			for range 3 {
				if _, err = t.create(ctx, fmt.Sprintf("warm%d", i), c.imageID, c.image.Ref); err == nil {
					break
				}
			}
			if err != nil {
				b.Fatalf("warm-up create on %s: %v", t.name, err)
			}
		}
	}
}

func (t *gateTarget) runSandbox(b *testing.B, ctx context.Context, cgroupParent string) {
	b.Helper()
	t.podCfg = &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "bench-create", Namespace: "bench", Uid: "bench-create-" + t.name},
		Labels:   map[string]string{"io.kubernetes.pod.namespace": "bench", "io.kubernetes.pod.name": "bench-create"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{CgroupParent: cgroupParent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}},
		LogDirectory: t.ctd.Dir,
	}
	sb, err := t.cri.Runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: t.podCfg})
	if err != nil {
		b.Fatalf("run sandbox on %s: %v", t.name, err)
	}
	t.podID = sb.PodSandboxId
}

// create times one CreateContainer as kubelet makes it (the image by ID, the pod spec's name
// beside it) and removes the container again, untimed.
func (t *gateTarget) create(ctx context.Context, name, imageID, ref string) (time.Duration, error) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	req := &runtimeapi.CreateContainerRequest{
		PodSandboxId: t.podID,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: name},
			Image:    &runtimeapi.ImageSpec{Image: imageID, UserSpecifiedImage: ref},
			Command:  []string{"/nothing"},
		},
		SandboxConfig: t.podCfg,
	}
	start := time.Now()
	resp, err := t.cri.Runtime.CreateContainer(cctx, req)
	took := time.Since(start)
	if err != nil {
		return took, err
	}
	if _, err := t.cri.Runtime.RemoveContainer(cctx, &runtimeapi.RemoveContainerRequest{ContainerId: resp.ContainerId}); err != nil {
		return took, fmt.Errorf("remove %s: %w", resp.ContainerId, err)
	}
	return took, nil
}

func (t *gateTarget) mustCreate(b *testing.B, name, imageID, ref string) time.Duration {
	b.Helper()
	took, err := t.create(context.Background(), name, imageID, ref)
	if err != nil {
		b.Fatalf("create on %s: %v", t.name, err)
	}
	return took
}

// BenchmarkCreate: warm, a create of an image pullguard verified when it was pulled, on the four
// containerds (target: pullguard's validator adds <= 0.3 ms to the trivial one at the median);
// cold, a create of an image pulled around pullguard, refused until the background verification
// has established its facts.
func BenchmarkCreate(b *testing.B) {
	if testing.Short() {
		b.Skip("needs containerd and a registry")
	}
	if *createBlock < 1 {
		b.Fatal("-create-block must be at least 1")
	}
	c := newCreateBed(b)
	b.Run("warm", func(b *testing.B) {
		var its []warmIteration
		order := iterationOrder()
		for i := 0; b.Loop(); i++ {
			if i > 0 && i%*createBlock == 0 {
				c.swap(b)
			}
			ts := c.targets()
			it := warmIteration{active: c.active}
			for _, j := range order(len(ts)) {
				it.took[j] = ts[j].mustCreate(b, fmt.Sprintf("c%d", i), c.imageID, c.image.Ref)
			}
			its = append(its, it)
		}
		c.reportWarm(b, its)
	})
	b.Run("cold", func(b *testing.B) {
		var refusals, admitted, lastTry, reference, refRefusals []time.Duration
		var attempts []int
		order := iterationOrder()
		for i := 0; b.Loop(); i++ {
			g, trivial := c.gated[c.active], c.gated[1-c.active]
			img := c.policy.push(b, c.bed, fmt.Sprintf("trust/cold-%d", i), "v1", 0)
			// Straight into containerd: pullguard never saw this image.
			_, id := pull(b, g.cri.Image, img.Ref)
			for _, j := range order(3) {
				switch j {
				case 0:
					reference = append(reference, trivial.mustCreate(b, fmt.Sprintf("r%d", i), c.imageID, c.image.Ref))
				case 1:
					refRefusals = append(refRefusals, trivialRefusal(b, &trivial.gateTarget, fmt.Sprintf("%s%d", refusePrefix, i), c.imageID, c.image.Ref))
				case 2:
					cold := coldCreate(b, &g.gateTarget, fmt.Sprintf("cold%d", i), id, img.Ref)
					refusals, admitted, lastTry, attempts = append(refusals, cold.refused), append(admitted, cold.total), append(lastTry, cold.admittedTry), append(attempts, cold.attempts)
				}
			}
		}
		mr, mref, ma, mrr := median(refusals), median(reference), median(admitted), median(refRefusals)
		b.ReportMetric(ms(mref), "trivial-ms")
		b.ReportMetric(ms(mrr), "trivial-refusal-ms")
		b.ReportMetric(ms(mr), "refusal-ms")
		b.ReportMetric(ms(ma), "admitted-after-ms")
		b.Logf("cold create: the first attempt is refused in %v (median; a refusal by the trivial validator takes %v, a create %v), "+
			"the retry admits it %v after the first attempt began (median; retried every %v, median %d attempts; the admitted attempt itself %v)",
			mr, mrr, mref, ma, *coldRetry, medianInt(attempts), median(lastTry))
		if l := c.decisionLatency("deny"); l > 0 {
			b.Logf("the refusing decision alone (pullguard's logged latency): median %v", l)
		}
		runSummary.set(b.Name()+"/refusal", summaryRow{what: `cold create (image pulled around pullguard): the first attempt, refused "has not verified"`,
			reference: "a refusal by the trivial validator, same iterations", ref: mrr, meas: mr, paired: pairedAdded(refRefusals, refusals)})
		runSummary.set(b.Name()+"/admitted", summaryRow{what: fmt.Sprintf("cold create: from the first attempt to the admitted retry (retried every %v)", *coldRetry),
			reference: "create with the trivial validator, same iterations", ref: mref, meas: ma, paired: pairedAdded(reference, admitted)})
	})
}

// trivialRefusal times a create the trivial validator refuses: what containerd spends on a
// refused create.
func trivialRefusal(b *testing.B, t *gateTarget, name, imageID, ref string) time.Duration {
	b.Helper()
	took, err := t.create(context.Background(), name, imageID, ref)
	if err == nil || !strings.Contains(status.Convert(err).Message(), "refused by the trivial validator") {
		b.Fatalf("create of %s on %s: want the trivial validator's refusal, got %v", name, t.name, err)
	}
	return took
}

// coldResult is one cold create: the refusal's latency, the time from the first attempt to the
// admitted one, the admitted attempt's own latency and the number of attempts.
type coldResult struct {
	refused, total, admittedTry time.Duration
	attempts                    int
}

// coldCreate makes a create that pullguard must refuse for want of facts, then retries it every
// -cold-retry until it is admitted.
func coldCreate(b *testing.B, t *gateTarget, name, imageID, ref string) coldResult {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	refused, err := t.create(ctx, name, imageID, ref)
	if err == nil {
		b.Fatalf("a create of %s, which pullguard never verified, was admitted at once", ref)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "has not verified") {
		b.Fatalf("the first create of %s: want a refusal saying pullguard has not verified it yet, got %v", ref, err)
	}
	tick := time.NewTicker(*coldRetry)
	defer tick.Stop()
	for attempts := 2; ; attempts++ {
		select {
		case <-ctx.Done():
			b.Fatalf("a create of %s was never admitted: %v", ref, err)
		case <-tick.C:
		}
		began := time.Now()
		var took time.Duration
		if took, err = t.create(ctx, name, imageID, ref); err == nil {
			// Up to the answer, not the untimed removal after it.
			return coldResult{refused: refused, total: began.Sub(start) + took, admittedTry: took, attempts: attempts}
		}
		if !strings.Contains(status.Convert(err).Message(), "has not verified") {
			b.Fatalf("a retried create of %s was refused for another reason: %v", ref, err)
		}
	}
}

// warmIteration is one round of creates: their times in the order of targets(), and which
// gated containerd pullguard was on.
type warmIteration struct {
	active int
	took   [4]time.Duration
}

// Indexes into warmIteration.took, in the order of targets().
const (
	onPullguard = iota
	onTrivial
	onNRI
	onNRIOff
)

// pullguardAdded estimates what pullguard's validator adds to the trivial one's: the median of
// each iteration's difference, taken separately for each containerd pullguard was on and then
// averaged, so that a difference between the two containerds cancels out. It also returns that
// difference (gate1 minus gate2), and false when pullguard was on one containerd only (then the
// estimate is the plain paired median).
func pullguardAdded(its []warmIteration) (added, instance time.Duration, both bool) {
	var by [2][]time.Duration
	var all []time.Duration
	for _, it := range its {
		d := it.took[onPullguard] - it.took[onTrivial]
		by[it.active] = append(by[it.active], d)
		all = append(all, d)
	}
	if len(by[0]) == 0 || len(by[1]) == 0 {
		return median(all), 0, false
	}
	m0, m1 := median(by[0]), median(by[1])
	return (m0 + m1) / 2, (m0 - m1) / 2, true
}

// pullguardAddedCI is a 95% confidence interval of pullguardAdded's estimate, by bootstrap: the
// iterations are resampled with replacement, within each containerd pullguard was on, 2000 times
// (seeded: the same iterations give the same interval).
func pullguardAddedCI(its []warmIteration) (lo, hi time.Duration) {
	if len(its) == 0 {
		return 0, 0
	}
	var by [2][]warmIteration
	for _, it := range its {
		by[it.active] = append(by[it.active], it)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	const reps = 2000
	ests := make([]time.Duration, reps)
	sample := make([]warmIteration, 0, len(its))
	for r := range ests {
		sample = sample[:0]
		for _, g := range by {
			for range g {
				sample = append(sample, g[rng.IntN(len(g))])
			}
		}
		ests[r], _, _ = pullguardAdded(sample)
	}
	slices.Sort(ests)
	return ests[reps*25/1000], ests[reps*975/1000-1]
}

// reportWarm reports the warm creates and adds their summary rows.
func (c *createBed) reportWarm(b *testing.B, its []warmIteration) {
	b.Helper()
	var times [4][]time.Duration
	for _, it := range its {
		for j, t := range it.took {
			times[j] = append(times[j], t)
		}
	}
	var m [4]time.Duration
	for j := range times {
		s := slices.Sorted(slices.Values(times[j]))
		m[j] = percentile(s, 50)
		b.ReportMetric(ms(m[j]), targetNames[j]+"-ms")
		b.Logf("create with %-9s p25 %v, p50 %v, p75 %v, p99 %v", targetNames[j], percentile(s, 25), m[j], percentile(s, 75), percentile(s, 99))
	}
	added, instance, both := pullguardAdded(its)
	lo, hi := pullguardAddedCI(its)
	b.ReportMetric(ms(added), "added-ms")
	b.Logf("pullguard - trivial, paired per containerd: %v (95%% confidence interval %v to %v)", added, lo, hi)
	b.Logf("paired: pullguard - trivial %v, trivial - NRI without plugins %v, NRI without plugins - off %v, pullguard - NRI without plugins %v",
		added, pairedAdded(times[onNRI], times[onTrivial]), pairedAdded(times[onNRIOff], times[onNRI]), pairedAdded(times[onNRI], times[onPullguard]))
	if both {
		b.Logf("the two containerds requiring pullguard differ by %v (gate1 - gate2, from the swaps): a difference of that "+
			"order between two containerds is in the floors too, which compare containerds configured differently", instance)
	}
	if l := c.decisionLatency("admit"); l > 0 {
		b.Logf("the decision alone (pullguard's logged latency of cached create decisions): median %v", l)
	}
	rows := []struct {
		key, what, reference string
		meas, ref            int
	}{
		{"pullguard", "create, pullguard's validator deciding from cached facts", "a validator answering at once", onPullguard, onTrivial},
		{"trivial", "create, a required validator answering at once (the floor of any)", "NRI on, no plugin", onTrivial, onNRI},
		{"nri", "create, NRI on with no plugin (containerd's default)", "NRI disabled", onNRI, onNRIOff},
		{"total", "create, pullguard's validator: all it adds to containerd's default", "NRI on, no plugin", onPullguard, onNRI},
	}
	for _, r := range rows {
		row := summaryRow{what: r.what, reference: r.reference, ref: m[r.ref], meas: m[r.meas], paired: pairedAdded(times[r.ref], times[r.meas])}
		if r.key == "pullguard" {
			// Paired per iteration and per containerd, the target is judged on it: a difference of
			// medians carries each side's whole spread (on a busy machine, creates spread over
			// milliseconds), the paired difference only what differs within an iteration. Even
			// so a busy machine can leave the target undecided, which the interval tells.
			row.paired, row.target = added, verdictCI(lo, hi, 300*time.Microsecond, "paired")
		}
		runSummary.set(b.Name()+"/"+r.key, row)
	}
}

// decisionLatency is the median latency pullguard logged for its create decisions with verdict,
// over both pullguards' current logs; 0 when none were found.
func (c *createBed) decisionLatency(verdict string) time.Duration {
	var ls []time.Duration
	for _, g := range c.gated {
		for _, l := range g.pg.LogLines(`"op":"create"`, `"verdict":"`+verdict+`"`) {
			var d struct {
				LatencyMS float64 `json:"latency_ms"`
			}
			if json.Unmarshal([]byte(l), &d) == nil {
				ls = append(ls, time.Duration(d.LatencyMS*float64(time.Millisecond)))
			}
		}
	}
	return median(ls)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func medianInt(xs []int) int {
	ds := make([]time.Duration, len(xs))
	for i, x := range xs {
		ds[i] = time.Duration(x)
	}
	return int(median(ds))
}
