package running

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"

	"github.com/pullguard/pullguard/plugin/enforce"
	"github.com/pullguard/pullguard/plugin/nodeimages"
	"github.com/pullguard/pullguard/plugin/policy"
)

// scripted answers each (namespace, image ID) with the decision set for it;
// it stands in for the engine, whose decisions have tests of their own.
type scripted struct {
	mu    sync.Mutex
	by    map[string]*enforce.Decision
	fresh int
}

func (s *scripted) set(ns, id string, d *enforce.Decision) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.by[ns+"/"+id] = d
}

func (s *scripted) DecideNode(_ context.Context, req enforce.NodeRequest) *enforce.Decision {
	s.mu.Lock()
	defer s.mu.Unlock()
	if req.Fresh {
		s.fresh++
	}
	if !req.Quiet || req.Op != enforce.OpRunning {
		panic("running containers are re-decided quietly, as OpRunning")
	}
	d := *s.by[req.Namespace+"/"+req.Image.ID]
	return &d
}

type images struct{}

func (images) ByImageID(_ context.Context, id string) ([]nodeimages.Ref, error) {
	return []nodeimages.Ref{{Name: "registry.example.com/app:v1", Target: "sha256:t-" + id}}, nil
}

func admit() *enforce.Decision {
	return &enforce.Decision{Verdict: enforce.Admit, Image: "registry.example.com/app:v1", Reason: "signatures verified", Running: policy.RunningEvict, EvictAfter: time.Minute}
}

func deny(cat enforce.Category, reason string) *enforce.Decision {
	return &enforce.Decision{Verdict: enforce.Deny, Category: cat, Image: "registry.example.com/app:v1", Reason: reason, Running: policy.RunningEvict, EvictAfter: time.Minute}
}

func pod(ns, name string, static bool) *api.PodSandbox {
	p := &api.PodSandbox{Id: "pod-" + name, Namespace: ns, Name: name, Uid: "uid-" + name, Annotations: map[string]string{"kubernetes.io/config.source": "api"}}
	if static {
		p.Annotations["kubernetes.io/config.source"] = "file"
	}
	return p
}

func ctr(id, podID, image string) *api.Container {
	return &api.Container{Id: id, PodSandboxId: podID, Name: "c-" + id, State: api.ContainerState_CONTAINER_RUNNING, Image: &api.Image{ConfigDigest: image}}
}

func find(st Status, id string) Container {
	for _, c := range st.Containers {
		if c.ID == id {
			return c
		}
	}
	return Container{}
}

// TestVerdicts: what a re-decision does to a running container's verdict and to what the agent
// is told to do with it.
func TestVerdicts(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name          string
		ns            string
		static        bool
		first, second *enforce.Decision
		verdict       string
		evictAt       bool
		noEviction    string
		logged        string
	}{
		{name: "admitted stays admitted", ns: "team", first: admit(), second: admit(), verdict: Admitted},
		{name: "no longer admitted, evict", ns: "team", first: admit(), second: deny(enforce.SignatureValidationFailed, "CVE-2026-1 critical"),
			verdict: Denied, evictAt: true, logged: "running container no longer admitted"},
		{name: "registry outage changes nothing", ns: "team", first: admit(), second: deny(enforce.RegistryUnavailable, "connection refused"),
			verdict: Admitted},
		{name: "not verified yet changes nothing", ns: "team", first: admit(),
			second: func() *enforce.Decision {
				d := deny(enforce.SignatureValidationFailed, "not verified")
				d.NotVerified = true
				return d
			}(),
			verdict: Admitted},
		{name: "fail_open changes nothing", ns: "team", first: deny(enforce.SignatureValidationFailed, "unsigned"),
			second:  func() *enforce.Decision { d := admit(); d.FailedOpen = true; return d }(),
			verdict: Denied, evictAt: true},
		{name: "admitted again", ns: "team", first: deny(enforce.SignatureValidationFailed, "unsigned"), second: admit(),
			verdict: Admitted, logged: "running container admitted again"},
		{name: "protected namespace only reports", ns: "kube-system", first: admit(), second: deny(enforce.SignatureValidationFailed, "unsigned"),
			verdict: Denied, noEviction: "protected", logged: "running container no longer admitted"},
		{name: "static pod only reports", ns: "team", static: true, first: admit(), second: deny(enforce.SignatureValidationFailed, "unsigned"),
			verdict: Denied, noEviction: "static pod", logged: "running container no longer admitted"},
		{name: "audit mode only reports", ns: "team", first: admit(),
			second: func() *enforce.Decision {
				d := admit()
				d.Audited, d.Category = true, enforce.SignatureValidationFailed
				return d
			}(),
			verdict: Denied, noEviction: "audit mode", logged: "running container no longer admitted"},
		{name: "report action", ns: "team", first: admit(),
			second: func() *enforce.Decision {
				d := deny(enforce.SignatureValidationFailed, "x")
				d.Running = policy.RunningReport
				return d
			}(),
			verdict: Denied, logged: "running container no longer admitted"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			d := &scripted{by: map[string]*enforce.Decision{}}
			clock := now
			tr := New(d, images{}, Options{Protected: []string{"kube-system"}, Logger: slog.New(slog.NewTextHandler(&logs, nil)), Now: func() time.Time { return clock }})
			p := pod(tc.ns, "p", tc.static)
			d.set(tc.ns, "sha256:img", tc.first)
			tr.Synchronized([]*api.PodSandbox{p}, []*api.Container{ctr("c1", p.Id, "sha256:img")})
			tr.pass(context.Background(), false)
			logs.Reset()
			clock = now.Add(time.Hour)
			d.set(tc.ns, "sha256:img", tc.second)
			tr.pass(context.Background(), true)
			c := find(tr.Status(), "c1")
			if c.Verdict != tc.verdict {
				t.Fatalf("verdict %q, want %q (%+v)", c.Verdict, tc.verdict, c)
			}
			if got := c.EvictAt != nil; got != tc.evictAt {
				t.Errorf("evict_at set %v, want %v (%+v)", got, tc.evictAt, c)
			}
			if tc.evictAt && c.Verdict == Denied && tc.first.Denied() == false && !c.EvictAt.Equal(clock.Add(time.Minute)) {
				t.Errorf("evict_at %v, want since + evictAfter = %v", c.EvictAt, clock.Add(time.Minute))
			}
			if !strings.Contains(c.NoEviction, tc.noEviction) || (tc.noEviction == "" && c.NoEviction != "") {
				t.Errorf("no_eviction %q, want %q", c.NoEviction, tc.noEviction)
			}
			if tc.logged == "" && strings.Contains(logs.String(), "running container") && !strings.Contains(logs.String(), "level=DEBUG") {
				t.Errorf("logged without a verdict change:\n%s", logs.String())
			}
			if tc.logged != "" && (strings.Count(logs.String(), tc.logged) != 1 || !strings.Contains(logs.String(), "namespace="+tc.ns)) {
				t.Errorf("want exactly one %q line naming the namespace:\n%s", tc.logged, logs.String())
			}
			if d.fresh != 1 {
				t.Errorf("re-check made %d fresh decisions, want 1", d.fresh)
			}
		})
	}
}

// TestOneDecisionPerNamespaceAndImage: containers sharing an image in one namespace cost one
// decision; containers gone from containerd leave the view.
func TestOneDecisionPerNamespaceAndImage(t *testing.T) {
	d := &scripted{by: map[string]*enforce.Decision{}}
	var counts map[[2]string]int
	tr := New(d, images{}, Options{Observe: func(c map[[2]string]int) { counts = c }})
	a, b := pod("a", "pa", false), pod("b", "pb", false)
	d.set("a", "sha256:x", admit())
	d.set("b", "sha256:x", deny(enforce.SignatureValidationFailed, "unsigned"))
	stopped := ctr("c4", a.Id, "sha256:x")
	stopped.State = api.ContainerState_CONTAINER_STOPPED
	tr.Synchronized([]*api.PodSandbox{a, b}, []*api.Container{
		ctr("c1", a.Id, "sha256:x"), ctr("c2", a.Id, "sha256:x"), ctr("c3", b.Id, "sha256:x"), stopped,
	})
	tr.pass(context.Background(), true)
	if d.fresh != 2 {
		t.Errorf("%d decisions for 2 (namespace, image) pairs", d.fresh)
	}
	if want := map[[2]string]int{{"a", Admitted}: 2, {"b", Denied}: 1}; len(counts) != 2 || counts[[2]string{"a", Admitted}] != 2 || counts[[2]string{"b", Denied}] != 1 {
		t.Errorf("counts %v, want %v (a stopped container is not running)", counts, want)
	}
	tr.Removed(&api.Container{Id: "c1"})
	tr.Stopped(&api.Container{Id: "c3"})
	if st := tr.Status(); len(st.Containers) != 1 || st.Containers[0].ID != "c2" || !st.Synchronized {
		t.Errorf("after removals: %+v", st)
	}
}

// TestResyncKeepsVerdictAndSince: a re-registration lists the same containers again; their
// verdicts and since when they hold carry over, so an eviction's grace period is not restarted.
func TestResyncKeepsVerdictAndSince(t *testing.T) {
	d := &scripted{by: map[string]*enforce.Decision{}}
	clock := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	tr := New(d, images{}, Options{Now: func() time.Time { return clock }})
	p := pod("team", "p", false)
	d.set("team", "sha256:x", deny(enforce.SignatureValidationFailed, "unsigned"))
	tr.Synchronized([]*api.PodSandbox{p}, []*api.Container{ctr("c1", p.Id, "sha256:x")})
	tr.pass(context.Background(), false)
	first := find(tr.Status(), "c1")
	clock = clock.Add(10 * time.Minute)
	tr.Synchronized([]*api.PodSandbox{p}, []*api.Container{ctr("c1", p.Id, "sha256:x")})
	if c := find(tr.Status(), "c1"); c.Verdict != Denied || !c.Since.Equal(first.Since) {
		t.Errorf("after a re-sync: %+v, want the verdict since %v", c, first.Since)
	}
}
