package kube

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pullguard/pullguard/daemonset/policysync"
	"github.com/pullguard/pullguard/plugin/policy"
)

// One API server for the package: starting it costs seconds; tests use their own namespaces.
var shared struct {
	once sync.Once
	srv  *Server
	err  error
	dir  string
}

// Token users besides admin and the agent.
var extraUsers = map[string][]string{"alice": nil, "auditor": {"security-auditors"}}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if shared.srv != nil {
		shared.srv.Stop()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// server returns the package's API server with pullguard's CRDs and RBAC installed from
// daemonset/. It skips under -short and fails (never skips) when the binaries are missing.
func server(t testing.TB) *Server {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real kube-apiserver and etcd; skipped with -short")
	}
	shared.once.Do(func() {
		bins, err := FindBinaries()
		if err != nil {
			shared.err = err
			return
		}
		shared.dir, err = os.MkdirTemp("", "pgkube-")
		if err != nil {
			shared.err = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		start := time.Now()
		srv, err := Start(ctx, bins, Options{Dir: shared.dir, Users: extraUsers})
		if err != nil {
			shared.err = err
			return
		}
		shared.srv = srv
		if err := install(ctx, srv); err != nil {
			shared.err = fmt.Errorf("install pullguard manifests: %w", err)
			return
		}
		fmt.Fprintf(os.Stderr, "kube-apiserver ready with pullguard CRDs and RBAC in %s\n", time.Since(start).Round(10*time.Millisecond))
	})
	if shared.err != nil {
		t.Fatalf("API server: %v", shared.err)
	}
	return shared.srv
}

func install(ctx context.Context, srv *Server) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	ds := filepath.Join(root, "daemonset")
	cs := clientset(nil, srv, AdminUser)
	for _, ns := range []string{"team-a", "team-b"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	crds, _ := filepath.Glob(filepath.Join(ds, "crds", "*.yaml"))
	files := append([]string{filepath.Join(ds, "namespace.yaml"), filepath.Join(ds, "serviceaccount.yaml")}, crds...)
	files = append(files, filepath.Join(ds, "rbac-policysync.yaml"), filepath.Join(ds, "components", "running-workloads", "rbac.yaml"))
	examples, _ := filepath.Glob(filepath.Join(ds, "examples", "rbac", "*.yaml"))
	files = append(files, examples...)
	objs, err := Decode(files...)
	if err != nil {
		return err
	}
	rc, err := srv.Config(AdminUser)
	if err != nil {
		return err
	}
	return Apply(ctx, rc, objs)
}

func config(t testing.TB, srv *Server, user string) *rest.Config {
	t.Helper()
	rc, err := srv.Config(user)
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

func clientset(t testing.TB, srv *Server, user string) *kubernetes.Clientset {
	rc, err := srv.Config(user)
	if err != nil {
		panic(err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		panic(err)
	}
	return cs
}

func dynamicFor(t testing.TB, srv *Server, user string) dynamic.Interface {
	t.Helper()
	d, err := dynamic.NewForConfig(config(t, srv, user))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// agentOpts are the options the agent runs with in a pod, as the DaemonSet's ServiceAccount.
func agentOpts(t testing.TB, srv *Server, dir, identity string) policysync.Options {
	t.Helper()
	cs := clientset(t, srv, AgentUser)
	return policysync.Options{
		Client:        dynamicFor(t, srv, AgentUser),
		Events:        cs.CoreV1(),
		Leases:        cs.CoordinationV1(),
		Dir:           dir,
		Namespace:     "pullguard-system",
		Identity:      identity,
		LeaseName:     "status-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")),
		LeaseDuration: 3 * time.Second,
		Debounce:      20 * time.Millisecond,
		ProbeInterval: 250 * time.Millisecond,
		Probe: func(ctx context.Context) error {
			return cs.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error()
		},
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// runAgent starts an agent; the returned stop function ends it and waits.
func runAgent(t testing.TB, opts policysync.Options) (*policysync.Agent, func()) {
	t.Helper()
	a, err := policysync.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("agent did not stop")
		}
	}
	t.Cleanup(stop)
	return a, stop
}

// waitFor polls cond until it holds or the deadline passes; cond explains its last miss.
func waitFor(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s: %s", d, what, why)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

// decide is the node's decision from the synced directory alone, as the host daemon builds it:
// policy.LoadDir + policy.NewSet + Match. It returns whether a rule admitted the image and the
// matching policy with its source (or the denial reason).
func decide(dir, namespace, image string) (bool, string, error) {
	ps, err := policy.LoadDir(dir)
	if os.IsNotExist(unwrapAll(err)) {
		ps, err = nil, nil
	}
	if err != nil {
		return false, "", err
	}
	set, err := policy.NewSet(ps, "")
	if err != nil {
		return false, "", err
	}
	m, err := set.Match(namespace, image)
	if err != nil {
		return false, "", err
	}
	if m.Rule == nil {
		return false, m.Reason, nil
	}
	return true, m.Policy.String(), nil // "ImagePolicy ns/name (source file)", as denials and check name it
}

func unwrapAll(err error) error {
	for err != nil {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		next := u.Unwrap()
		if next == nil {
			return err
		}
		err = next
	}
	return nil
}

// expectDecision waits until the node's decision for image in namespace is admitted (or not)
// and, when admitted, comes from a source containing srcPart.
func expectDecision(t testing.TB, dir, ns, image string, admitted bool, srcPart string) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("decision for %s in %q admitted=%v", image, ns, admitted), func() (bool, string) {
		ok, src, err := decide(dir, ns, image)
		if err != nil {
			return false, err.Error()
		}
		if ok != admitted {
			return false, fmt.Sprintf("admitted=%v (%s)", ok, src)
		}
		if admitted && !strings.Contains(src, srcPart) {
			return false, "source " + src
		}
		return true, ""
	})
}

// policyObject builds an ImagePolicy (namespace != "") or ClusterImagePolicy.
func policyObject(namespace, name string, spec map[string]any) *unstructured.Unstructured {
	kind := "ClusterImagePolicy"
	if namespace != "" {
		kind = "ImagePolicy"
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "pullguard.dev/v1beta1",
		"kind":       kind,
		"metadata":   map[string]any{"name": name},
		"spec":       spec,
	}}
	if namespace != "" {
		u.SetNamespace(namespace)
	}
	return u
}

func policies(d dynamic.Interface, namespace string) dynamic.ResourceInterface {
	if namespace == "" {
		return d.Resource(policysync.ClusterImagePoliciesResource)
	}
	return d.Resource(policysync.ImagePoliciesResource).Namespace(namespace)
}

// repos is a spec admitting the given patterns with no checks.
func repos(patterns ...string) map[string]any {
	rs := make([]any, len(patterns))
	for i, p := range patterns {
		rs[i] = map[string]any{"name": p}
	}
	return map[string]any{"repositories": rs}
}
