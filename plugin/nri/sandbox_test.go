package nri

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pullguard/pullguard/plugin/enforce"
	"github.com/pullguard/pullguard/plugin/nodeimages"
)

// The gate's own logic, with containerd's records and the engine stood in
// for: the real ones are exercised end to end in integration/e2e
// (TestBypassSandboxImage), where a pause image is signed after a refusal.

var pauseTarget = "sha256:" + strings.Repeat("a", 64)

type fakeSandboxImages struct{}

func (fakeSandboxImages) ByName(context.Context, string, time.Duration) (nodeimages.Ref, bool, error) {
	return nodeimages.Ref{Name: "registry.test/pause:1", Target: pauseTarget}, true, nil
}

func (fakeSandboxImages) ByTarget(context.Context, string) ([]nodeimages.Ref, error) {
	return []nodeimages.Ref{{Name: "registry.test/pause:1", Target: pauseTarget}}, nil
}

func (fakeSandboxImages) Pinned(context.Context, time.Duration) ([]nodeimages.Ref, error) {
	return nil, nil
}

func (fakeSandboxImages) ImageIDs(string) []string { return []string{"sha256:id"} }

// switchDecider denies until admit is set, and records what it was asked.
type switchDecider struct {
	mu     sync.Mutex
	admit  bool
	asked  []enforce.NodeRequest
	reason string
}

func (s *switchDecider) DecideNode(_ context.Context, req enforce.NodeRequest) *enforce.Decision {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.asked = append(s.asked, req)
	if s.admit {
		return &enforce.Decision{Verdict: enforce.Admit}
	}
	return &enforce.Decision{Verdict: enforce.Deny, Reason: s.reason}
}

func (s *switchDecider) Decide(context.Context, enforce.Request) *enforce.Decision {
	panic("the sandbox image is on the node: no decision by name")
}

func (s *switchDecider) set(admit bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.admit = admit
}

func (s *switchDecider) calls() []enforce.NodeRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]enforce.NodeRequest(nil), s.asked...)
}

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// A sandbox image denied once is decided again, from cached facts, when a
// pod asks after sandboxRetry: signing it admits the next pod without waiting
// for the periodic decision, and a burst of pods does not re-decide it each.
func TestSandboxGateDecidesADenialAgain(t *testing.T) {
	ctx := t.Context()
	d := &switchDecider{reason: "found no signature"}
	g, err := NewSandboxGate("registry.test/pause:1", d, fakeSandboxImages{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	clk := &testClock{t: time.Unix(1000, 0)}
	g.now = clk.Now
	g.Decide(ctx)
	if err := g.AdmitSandbox(ctx); err == nil || !strings.Contains(err.Error(), "found no signature") {
		t.Fatalf("unsigned sandbox image: want a refusal naming the reason, got %v", err)
	}

	d.set(true) // signed now
	before := len(d.calls())
	if err := g.AdmitSandbox(ctx); err == nil {
		t.Fatal("within sandboxRetry of the last decision: want the verdict made then")
	}
	if n := len(d.calls()) - before; n != 0 {
		t.Fatalf("within sandboxRetry: decided %d more times, want none", n)
	}

	clk.advance(sandboxRetry + time.Millisecond)
	if err := g.AdmitSandbox(ctx); err != nil {
		t.Fatalf("after sandboxRetry, signed: want admitted, got %v", err)
	}
	calls := d.calls()
	if last := calls[len(calls)-1]; !last.CachedOnly || last.Op != enforce.OpSandbox {
		t.Errorf("re-decision inside containerd's call: want a cached-only sandbox decision, got %+v", last)
	}
	if len(calls) != before+1 {
		t.Errorf("decided %d times for one pod, want 1", len(calls)-before)
	}
	if v := g.Verdicts()[pauseTarget]; v == nil || v.Denied() {
		t.Errorf("the admission is not kept as the verdict: %+v", v)
	}
}

// An admitted sandbox image is answered from its verdict: no decision per pod.
func TestSandboxGateAdmittedIsNotDecidedPerPod(t *testing.T) {
	ctx := t.Context()
	d := &switchDecider{admit: true}
	g, err := NewSandboxGate("registry.test/pause:1", d, fakeSandboxImages{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	clk := &testClock{t: time.Unix(1000, 0)}
	g.now = clk.Now
	g.Decide(ctx)
	before := len(d.calls())
	clk.advance(time.Hour)
	for range 3 {
		if err := g.AdmitSandbox(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(d.calls()) - before; n != 0 {
		t.Errorf("admitted verdict: decided %d more times, want none", n)
	}
}
