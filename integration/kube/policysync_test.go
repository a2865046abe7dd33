package kube

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/dynamic"

	"github.com/pullguard/pullguard/daemonset/policysync"
	"github.com/pullguard/pullguard/plugin/policy"
)

// The CRD's OpenAPI schema and CEL rules turn away what plugin/policy would reject, at apply
// time, with the API server's error.
func TestSchemaRejectsInvalidObjects(t *testing.T) {
	srv := server(t)
	ctx := context.Background()
	admin := dynamicFor(t, srv, AdminUser)
	tests := []struct {
		name    string
		spec    map[string]any
		wantErr string
	}{
		{"mode", map[string]any{"mode": "warn"}, "spec.mode"},
		{"severity", map[string]any{"repositories": []any{map[string]any{"name": "*", "policy": map[string]any{"va": map[string]any{"enabled": true, "maxSeverity": "extreme"}}}}}, "maxSeverity"},
		{"report age", map[string]any{"repositories": []any{map[string]any{"name": "*", "policy": map[string]any{"va": map[string]any{"maxReportAge": "-1h"}}}}}, "positive duration"},
		{"seed typo with a value", map[string]any{"repositories": []any{map[string]any{"name": "*", "policies": map[string]any{"trust": map[string]any{"enabled": true}}}}}, "policies"},
		{"empty name", map[string]any{"repositories": []any{map[string]any{"name": ""}}}, "name"},
		{"signer name", map[string]any{"repositories": []any{map[string]any{"name": "*", "policy": map[string]any{"trust": map[string]any{"signerSecrets": []any{map[string]any{"name": "a b"}}}}}}}, "signerSecrets"},
		{"expiry", map[string]any{"repositories": []any{map[string]any{"name": "*", "policy": map[string]any{"va": map[string]any{"allow": []any{map[string]any{"id": "CVE-1", "expires": "tomorrow"}}}}}}}, "expires"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			obj := policyObject("team-a", "bad-"+strings.ReplaceAll(tc.name, " ", "-"), tc.spec)
			_, err := policies(admin, "team-a").Create(ctx, obj, metav1.CreateOptions{})
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("create: %v; want an Invalid error mentioning %q", err, tc.wantErr)
			}
		})
	}
	// The seed's own documents load once their apiVersion is changed.
	root, _ := repoRoot()
	seeds, err := Decode(filepath.Join(root, "daemonset", "policies", "00-cluster-default.yaml"), filepath.Join(root, "daemonset", "policies", "10-kube-system.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range seeds {
		s.SetAPIVersion("pullguard.dev/v1beta1")
		s.SetName("seed-" + s.GetName())
		if s.GetNamespace() != "" {
			s.SetNamespace("team-b")
		}
		if _, err := policies(admin, s.GetNamespace()).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Errorf("seed policy %s: %v", s.GetName(), err)
		}
		_ = policies(admin, s.GetNamespace()).Delete(ctx, s.GetName(), metav1.DeleteOptions{})
	}
}

// Create, update and delete change the node's decision within a bounded time.
func TestSyncCreateUpdateDelete(t *testing.T) {
	srv := server(t)
	ctx := context.Background()
	admin := dynamicFor(t, srv, AdminUser)
	dir := filepath.Join(t.TempDir(), "crd-policies")
	a, _ := runAgent(t, agentOpts(t, srv, dir, "node-1"))
	waitFor(t, 10*time.Second, "agent synced", func() (bool, string) { h := a.Health(); return h.Synced, h.Describe() })

	const ns = "team-a"
	img, other := "registry.example.com/app/web:1", "other.example.com/tool:2"
	expectDecision(t, dir, ns, img, false, "")

	obj := policyObject(ns, "lifecycle", repos("registry.example.com/app/*"))
	if _, err := policies(admin, ns).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = policies(admin, ns).Delete(context.Background(), "lifecycle", metav1.DeleteOptions{}) })
	expectDecision(t, dir, ns, img, true, "ImagePolicy_team-a.yaml")
	expectDecision(t, dir, ns, other, false, "")

	cur, err := policies(admin, ns).Get(ctx, "lifecycle", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Object["spec"] = repos("registry.example.com/app/*", "other.example.com/*")
	if _, err := policies(admin, ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectDecision(t, dir, ns, other, true, "lifecycle")

	// A ClusterImagePolicy applies where a namespace has none of its own.
	if _, err := policies(admin, "").Create(ctx, policyObject("", "lifecycle-cluster", repos("cluster.example.com/*")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = policies(admin, "").Delete(context.Background(), "lifecycle-cluster", metav1.DeleteOptions{})
	})
	expectDecision(t, dir, "team-b", "cluster.example.com/x:1", true, "ClusterImagePolicy.yaml")
	expectDecision(t, dir, ns, "cluster.example.com/x:1", false, "") // team-a has its own

	if err := policies(admin, ns).Delete(ctx, "lifecycle", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expectDecision(t, dir, ns, "cluster.example.com/x:1", true, "ClusterImagePolicy.yaml")
	expectDecision(t, dir, ns, img, false, "")
	if err := policies(admin, "").Delete(ctx, "lifecycle-cluster", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expectDecision(t, dir, "team-b", "cluster.example.com/x:1", false, "")
}

// An object the schema accepts but the node rejects (here: a signer this node does not define)
// is not applied -- the last good version stays on disk -- and the elected agent reports it with
// a status condition and an Event.
func TestInvalidObjectReportedAndNotApplied(t *testing.T) {
	srv := server(t)
	ctx := context.Background()
	admin := dynamicFor(t, srv, AdminUser)
	dir := filepath.Join(t.TempDir(), "crd-policies")
	opts := agentOpts(t, srv, dir, "node-leader")
	opts.Signers = func() ([]string, error) { return []string{"release"}, nil }
	a, _ := runAgent(t, opts)
	// A second node: it renders the same way but never writes status.
	dir2 := filepath.Join(t.TempDir(), "crd-policies")
	opts2 := agentOpts(t, srv, dir2, "node-follower")
	opts2.Signers = opts.Signers
	b, _ := runAgent(t, opts2)
	waitFor(t, 15*time.Second, "one leader", func() (bool, string) {
		return a.Health().Leader != b.Health().Leader, "leaders: " + boolStr(a.Health().Leader) + "/" + boolStr(b.Health().Leader)
	})

	const ns, name = "team-b", "signed"
	good := map[string]any{"repositories": []any{map[string]any{"name": "registry.example.com/*", "policy": map[string]any{"trust": map[string]any{"enabled": true, "signerSecrets": []any{map[string]any{"name": "release"}}}}}}}
	if _, err := policies(admin, ns).Create(ctx, policyObject(ns, name, good), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = policies(admin, ns).Delete(context.Background(), name, metav1.DeleteOptions{}) })
	expectDecision(t, dir, ns, "registry.example.com/a:1", true, name)
	expectDecision(t, dir2, ns, "registry.example.com/a:1", true, name)
	waitCondition(t, admin, ns, name, "True", "")

	file := filepath.Join(dir, policysync.Key{Kind: "ImagePolicy", Namespace: ns, Name: name}.FileName())
	before, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := policies(admin, ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Object["spec"] = map[string]any{"repositories": []any{
		map[string]any{"name": "registry.example.com/*", "policy": map[string]any{"trust": map[string]any{"enabled": true, "signerSecrets": []any{map[string]any{"name": "nobody"}}}}},
		map[string]any{"name": "evil.example.com/*"},
	}}
	if _, err := policies(admin, ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, admin, ns, name, "False", `signer "nobody"`)
	waitFor(t, 10*time.Second, "Warning Event PolicyRejected", func() (bool, string) {
		evs, err := clientset(t, srv, AdminUser).CoreV1().Events(ns).List(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("involvedObject.name", name).String(),
		})
		if err != nil {
			return false, err.Error()
		}
		for _, e := range evs.Items {
			if e.Reason == policysync.EventRejected && e.Type == "Warning" && strings.Contains(e.Message, "nobody") {
				return true, ""
			}
		}
		return false, "no matching event"
	})
	// Both nodes keep the last good version: the new, unchecked repository is not admitted.
	for _, d := range []string{dir, dir2} {
		after, err := os.ReadFile(filepath.Join(d, filepath.Base(file)))
		if err != nil || string(after) != string(before) {
			t.Errorf("%s changed after a rejected update (err %v)", d, err)
		}
		if ok, _, _ := decide(d, ns, "evil.example.com/x:1"); ok {
			t.Errorf("%s admits an image only the rejected version allows", d)
		}
	}
	if h := a.Health(); h.Rejected != 1 {
		t.Errorf("health rejected = %d, want 1 (%s)", h.Rejected, h.Describe())
	}
	// Fixing the object applies it and flips the condition back.
	cur, _ = policies(admin, ns).Get(ctx, name, metav1.GetOptions{})
	cur.Object["spec"] = repos("registry.example.com/*", "fixed.example.com/*")
	if _, err := policies(admin, ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectDecision(t, dir, ns, "fixed.example.com/x:1", true, name)
	waitCondition(t, admin, ns, name, "True", "")
}

func boolStr(b bool) string {
	if b {
		return "leader"
	}
	return "follower"
}

// waitCondition waits for the Accepted condition of an ImagePolicy.
func waitCondition(t *testing.T, d dynamic.Interface, ns, name, status, msgPart string) {
	t.Helper()
	waitFor(t, 15*time.Second, "condition Accepted="+status+" on "+ns+"/"+name, func() (bool, string) {
		u, err := policies(d, ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] != policysync.ConditionAccepted {
				continue
			}
			msg, _ := m["message"].(string)
			og, _ := m["observedGeneration"].(int64)
			if m["status"] == status && strings.Contains(msg, msgPart) && og == u.GetGeneration() {
				return true, ""
			}
			return false, fmt.Sprintf("status=%v generation %d/%d message=%q", m["status"], og, u.GetGeneration(), msg)
		}
		return false, "no Accepted condition"
	})
}

// The node keeps its synced policies when the agent stops, when it restarts while the API
// server is away, and through an API server outage; readiness says so.
func TestRestartAndOutageKeepPolicies(t *testing.T) {
	srv := server(t)
	ctx := context.Background()
	admin := dynamicFor(t, srv, AdminUser)
	dir := filepath.Join(t.TempDir(), "crd-policies")
	const ns, img = "team-a", "keep.example.com/app:1"
	if _, err := policies(admin, ns).Create(ctx, policyObject(ns, "keep", repos("keep.example.com/*")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = policies(admin, ns).Delete(context.Background(), "keep", metav1.DeleteOptions{}) })

	_, stop := runAgent(t, agentOpts(t, srv, dir, "node-r"))
	expectDecision(t, dir, ns, img, true, "keep")
	stop()
	if ok, _, err := decide(dir, ns, img); !ok || err != nil {
		t.Fatalf("agent stopped: decision lost (err %v)", err)
	}

	// Outage: the API server goes away while an agent runs.
	a, stop2 := runAgent(t, agentOpts(t, srv, dir, "node-r"))
	waitFor(t, 10*time.Second, "agent synced", func() (bool, string) { h := a.Health(); return h.Ready(), h.Describe() })
	srv.StopAPIServer()
	apiUp := false
	t.Cleanup(func() {
		if !apiUp { // leave the shared server running for the other tests
			if err := srv.StartAPIServer(context.Background()); err != nil {
				t.Errorf("restart API server: %v", err)
			}
		}
	})
	waitFor(t, 10*time.Second, "agent notices the outage", func() (bool, string) {
		h := a.Health()
		return !h.Connected && strings.Contains(h.Describe(), "keeps enforcing"), h.Describe()
	})
	rr := httpGet(t, a, "/readyz")
	if rr.code != 503 || !strings.Contains(rr.body, "unreachable") {
		t.Errorf("/readyz during outage = %d %q", rr.code, rr.body)
	}
	if ok, _, err := decide(dir, ns, img); !ok || err != nil {
		t.Fatalf("during outage: decision lost (err %v)", err)
	}
	// A restart while the API server is down starts from disk and writes nothing.
	stop2()
	b, _ := runAgent(t, agentOpts(t, srv, dir, "node-r"))
	waitFor(t, 10*time.Second, "restarted agent reports it is not synced", func() (bool, string) {
		h := b.Health()
		return !h.Synced && !h.Connected && h.OnDisk >= 1, h.Describe()
	})
	if ok, _, err := decide(dir, ns, img); !ok || err != nil {
		t.Fatalf("restart during outage: decision lost (err %v)", err)
	}

	if err := srv.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	apiUp = true
	waitFor(t, 30*time.Second, "agent recovers", func() (bool, string) { h := b.Health(); return h.Ready(), h.Describe() })
	if _, err := policies(admin, ns).Create(ctx, policyObject(ns, "after-outage", repos("after.example.com/*")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = policies(admin, ns).Delete(context.Background(), "after-outage", metav1.DeleteOptions{}) })
	expectDecision(t, dir, ns, "after.example.com/x:1", true, "after-outage")
	expectDecision(t, dir, ns, img, true, "keep")
}

// RBAC as shipped: a namespace policy editor manages ImagePolicies of its namespace only; the
// agent can read policies and write status but not change policies or read Secrets elsewhere.
func TestRBAC(t *testing.T) {
	srv := server(t)
	ctx := context.Background()
	alice := dynamicFor(t, srv, "alice")
	auditor := dynamicFor(t, srv, "auditor")
	agent := dynamicFor(t, srv, AgentUser)

	if _, err := policies(alice, "team-a").Create(ctx, policyObject("team-a", "by-alice", repos("*")), metav1.CreateOptions{}); err != nil {
		t.Fatalf("editor creating an ImagePolicy in her namespace: %v", err)
	}
	t.Cleanup(func() { _ = policies(alice, "team-a").Delete(context.Background(), "by-alice", metav1.DeleteOptions{}) })
	denied := []struct {
		name string
		err  error
	}{
		{"editor creates a ClusterImagePolicy", create(ctx, alice, "", "by-alice")},
		{"editor creates an ImagePolicy in another namespace", create(ctx, alice, "team-b", "by-alice")},
		{"auditor creates an ImagePolicy", create(ctx, auditor, "team-a", "by-auditor")},
		{"agent creates an ImagePolicy", create(ctx, agent, "team-a", "by-agent")},
		{"agent creates a ClusterImagePolicy", create(ctx, agent, "", "by-agent")},
	}
	for _, d := range denied {
		if !apierrors.IsForbidden(d.err) {
			t.Errorf("%s: err = %v, want Forbidden", d.name, d.err)
		}
	}
	if _, err := policies(auditor, "").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("auditor listing ClusterImagePolicies: %v", err)
	}
	if _, err := policies(agent, "").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("agent listing ClusterImagePolicies: %v", err)
	}
	cs := clientset(t, srv, AgentUser)
	if _, err := cs.CoreV1().Secrets("team-a").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("agent listing Secrets in team-a: err = %v, want Forbidden", err)
	}
}

func create(ctx context.Context, d dynamic.Interface, ns, name string) error {
	_, err := policies(d, ns).Create(ctx, policyObject(ns, name, repos("*")), metav1.CreateOptions{})
	if err == nil {
		_ = policies(d, ns).Delete(ctx, name, metav1.DeleteOptions{})
	}
	return err
}

type response struct {
	code int
	body string
}

func httpGet(t *testing.T, a *policysync.Agent, path string) response {
	t.Helper()
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return response{rec.Code, rec.Body.String()}
}

// signerSecrets: a Secret of the signer's name in pullguard's namespace becomes that signer's
// trust store on the node; a Secret of the same name elsewhere is never read.
func TestSignerSecretBecomesTrustStore(t *testing.T) {
	srv := server(t)
	ctx := context.Background()
	admin := dynamicFor(t, srv, AdminUser)
	cs := clientset(t, srv, AdminUser)
	caPEM := srv.caPEM // any certificate will do
	for _, ns := range []string{"pullguard-system", "team-a"} {
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "release-" + ns, Namespace: ns}, Data: map[string][]byte{"ca.crt": caPEM}}
		if _, err := cs.CoreV1().Secrets(ns).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cs.CoreV1().Secrets(ns).Delete(context.Background(), sec.Name, metav1.DeleteOptions{}) })
	}
	spec := map[string]any{"repositories": []any{map[string]any{"name": "signed.example.com/*", "policy": map[string]any{"trust": map[string]any{
		"enabled": true, "signerSecrets": []any{map[string]any{"name": "release-pullguard-system"}, map[string]any{"name": "release-team-a"}}}}}}}
	if _, err := policies(admin, "team-a").Create(ctx, policyObject("team-a", "uses-secrets", spec), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = policies(admin, "team-a").Delete(context.Background(), "uses-secrets", metav1.DeleteOptions{})
	})

	base := t.TempDir()
	opts := agentOpts(t, srv, filepath.Join(base, "crd-policies"), "node-s")
	opts.DisableStatus = true
	opts.SignerSecrets = &policysync.SignerSecrets{Client: clientset(t, srv, AgentUser).CoreV1(), Namespace: "pullguard-system", Dir: filepath.Join(base, "signers")}
	runAgent(t, opts)
	store := filepath.Join(base, "signers", "release-pullguard-system", "ca.crt")
	waitFor(t, 15*time.Second, "trust store written", func() (bool, string) {
		b, err := os.ReadFile(store)
		if err != nil {
			return false, err.Error()
		}
		return string(b) == string(caPEM), "content differs"
	})
	if _, err := os.Stat(filepath.Join(base, "signers", "release-team-a")); !os.IsNotExist(err) {
		t.Errorf("a Secret outside pullguard's namespace reached the node: %v", err)
	}
}

// An object named like a policy the node already has from another source (config.toml, the
// policy directory) is rejected: the daemon would refuse the whole set with a duplicate.
func TestDuplicateOfNodePolicyRejected(t *testing.T) {
	srv := server(t)
	ctx := context.Background()
	admin := dynamicFor(t, srv, AdminUser)
	dir := filepath.Join(t.TempDir(), "crd-policies")
	opts := agentOpts(t, srv, dir, "node-d")
	opts.NodePolicies = func() ([]policy.Policy, error) {
		return []policy.Policy{{Kind: policy.KindNamespace, Namespace: "team-b", Name: "dup", Source: "/etc/pullguard/policies/dup.yaml"}}, nil
	}
	a, _ := runAgent(t, opts)
	for _, name := range []string{"dup", "fine"} {
		if _, err := policies(admin, "team-b").Create(ctx, policyObject("team-b", name, repos(name+".example.com/*")), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = policies(admin, "team-b").Delete(context.Background(), name, metav1.DeleteOptions{}) })
	}
	expectDecision(t, dir, "team-b", "fine.example.com/x:1", true, "team-b/fine")
	waitCondition(t, admin, "team-b", "dup", "False", "also defined in /etc/pullguard/policies/dup.yaml")
	if ok, _, _ := decide(dir, "team-b", "dup.example.com/x:1"); ok {
		t.Error("the duplicate reached the node")
	}
	if h := a.Health(); h.Rejected != 1 {
		t.Errorf("rejected = %d, want 1", h.Rejected)
	}
}
