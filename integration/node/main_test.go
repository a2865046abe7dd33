package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// startBed starts a bed for t and registers its cleanup; on failure it prints the bed's
// diagnostics. Skipped with -short; fails (never skips) when the tools are missing.
func startBed(t *testing.T, ctx context.Context) *Bed {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a systemd node with containerd and kubelet and a control plane; skipped with -short")
	}
	start := time.Now()
	b, err := Start(ctx, Options{Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatalf("start node bed: %v", err)
	}
	t.Logf("node bed up in %s: node %s, API server %s, registry %s", time.Since(start).Round(time.Millisecond), b.Node.Name, b.Cluster.URL, b.Registry.Host)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
		defer cancel()
		if t.Failed() {
			t.Log(b.Diagnostics(ctx))
		}
		if err := b.Close(ctx); err != nil {
			t.Errorf("close node bed: %v", err)
		}
	})
	return b
}

// closeAndCheckClean stops the bed at the end of a test and fails it for anything the bed
// left behind (processes, mounts, cgroups, devices, nspawn files).
func closeAndCheckClean(t *testing.T, ctx context.Context, b *Bed) {
	t.Helper()
	start := time.Now()
	if err := b.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	t.Logf("bed stopped in %s", time.Since(start).Round(time.Millisecond))
	left, err := b.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range left {
		t.Errorf("left behind: %s", l)
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// hostPod is a host-network pod running image with cmd: the node runs no other kind.
func hostPod(ns, name, image string, cmd ...string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			HostNetwork:                   true,
			TerminationGracePeriodSeconds: ptr(int64(1)),
			Containers: []corev1.Container{{
				Name: "main", Image: image, Command: cmd, ImagePullPolicy: corev1.PullIfNotPresent,
			}},
		},
	}
}

func ptr[T any](v T) *T { return &v }

// waitPod waits until cond accepts the pod (or returns errStop).
func waitPod(ctx context.Context, cs kubernetes.Interface, ns, name string, timeout time.Duration, what string, cond func(*corev1.Pod) error) (*corev1.Pod, error) {
	var last *corev1.Pod
	err := poll(ctx, timeout, fmt.Sprintf("pod %s/%s: %s", ns, name, what), func(ctx context.Context) error {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		last = p
		return cond(p)
	})
	return last, err
}

func running(p *corev1.Pod) error {
	for _, s := range p.Status.ContainerStatuses {
		if s.State.Running == nil {
			return fmt.Errorf("container %s not running: %s", s.Name, describeState(s.State))
		}
	}
	if p.Status.Phase != corev1.PodRunning {
		return fmt.Errorf("phase %s", p.Status.Phase)
	}
	return nil
}

func describeState(s corev1.ContainerState) string {
	switch {
	case s.Waiting != nil:
		return "waiting: " + s.Waiting.Reason + ": " + s.Waiting.Message
	case s.Terminated != nil:
		return fmt.Sprintf("terminated: %s (exit %d): %s", s.Terminated.Reason, s.Terminated.ExitCode, s.Terminated.Message)
	case s.Running != nil:
		return "running"
	}
	return "unknown"
}

// podLog reads a container's log from the node's /var/log/pods (kubelet's own files: the
// kubelet API listens on the node's loopback only and needs no detour through it).
func (b *Bed) podLog(p *corev1.Pod, container string) (string, error) {
	dir := b.Node.Path(filepath.Join("/var/log/pods", p.Namespace+"_"+p.Name+"_"+string(p.UID), container))
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("log of %s/%s %s: %w", p.Namespace, p.Name, container, err)
	}
	var s strings.Builder
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return "", err
		}
		s.Write(data)
	}
	if s.Len() == 0 {
		return "", errors.New("empty log")
	}
	return s.String(), nil
}
