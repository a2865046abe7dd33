package kube

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BenchmarkApplyToDecision measures, with 1,000 policy objects in the cluster, the time from
// creating one more ImagePolicy on the API server to the first node decision that uses it: the
// agent sees the watch event, validates, swaps a new snapshot of 1,001 files, and the node loads
// the directory and builds its policy set (policy.LoadDir + NewSet + Match, as the daemon's
// reload does). Target: <= 2 s. The host daemon's own poll interval (2 s by default) comes on
// top of this in production; SIGHUP or a shorter -reload-interval removes it.
//
//	go test -run '^$' -bench ApplyToDecision -benchtime 20x ./integration/kube/
func BenchmarkApplyToDecision(b *testing.B) {
	srv := server(b)
	ctx := context.Background()
	admin := dynamicFor(b, srv, AdminUser)
	const namespaces, perNamespace = 10, 100
	cs := clientset(b, srv, AdminUser)
	for n := range namespaces {
		ns := fmt.Sprintf("bench-%d", n)
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			b.Fatal(err)
		}
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench-new"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		b.Fatal(err)
	}
	// 1,000 objects, created 8 at a time.
	var wg sync.WaitGroup
	errs := make(chan error, namespaces*perNamespace)
	sem := make(chan struct{}, 8)
	for n := range namespaces {
		for i := range perNamespace {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				ns := fmt.Sprintf("bench-%d", n)
				spec := repos(fmt.Sprintf("registry.example.com/team%d/app%d/*", n, i), fmt.Sprintf("mirror.example.com/team%d/app%d:*", n, i))
				_, err := policies(admin, ns).Create(ctx, policyObject(ns, fmt.Sprintf("p%d", i), spec), metav1.CreateOptions{})
				if err != nil && !apierrors.IsAlreadyExists(err) {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	dir := filepath.Join(b.TempDir(), "crd-policies")
	opts := agentOpts(b, srv, dir, "bench-node")
	opts.Logger = nil // quiet
	opts.DisableStatus = true
	a, _ := runAgent(b, opts)
	waitFor(b, 60*time.Second, "1,000 policies synced", func() (bool, string) {
		h := a.Health()
		return h.Synced && h.OnDisk >= namespaces*perNamespace, h.Describe()
	})
	// What one node-side decision build costs on its own, for the record.
	start := time.Now()
	if _, _, err := decide(dir, "bench-0", "registry.example.com/team0/app0/x:1"); err != nil {
		b.Fatal(err)
	}
	loadCost := time.Since(start)

	var lat []time.Duration
	b.ResetTimer()
	for i := range b.N {
		name := fmt.Sprintf("new-%d-%d", time.Now().UnixNano(), i)
		img := fmt.Sprintf("%s.example.com/app:1", name)
		t0 := time.Now()
		if _, err := policies(admin, "bench-new").Create(ctx, policyObject("bench-new", name, repos(name+".example.com/*")), metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		for {
			ok, _, err := decide(dir, "bench-new", img)
			if err != nil {
				b.Fatal(err)
			}
			if ok {
				break
			}
			if time.Since(t0) > 30*time.Second {
				b.Fatalf("policy %s not in force after 30s", name)
			}
		}
		lat = append(lat, time.Since(t0))
		b.StopTimer()
		_ = policies(admin, "bench-new").Delete(ctx, name, metav1.DeleteOptions{})
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Milliseconds()), "max-ms")
	b.ReportMetric(float64(loadCost.Milliseconds()), "node-load-1000-ms")
}
