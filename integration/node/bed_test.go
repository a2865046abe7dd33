package node

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestBedRunsPodsAndCleansUp boots the bed, checks that the node registered itself with the
// versions it runs and that the scheduler and kubelet run a host-network pod on it, then stops
// the bed and checks that nothing is left on the machine.
func TestBedRunsPodsAndCleansUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	b := startBed(t, ctx)
	cs := b.Cluster.Admin

	node, err := cs.CoreV1().Nodes().Get(ctx, b.Node.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	info := node.Status.NodeInfo
	// containerd built from its module (not its Makefile) says 2.4.2+unknown.
	if info.KubeletVersion != "v1.34.4" || !strings.HasPrefix(info.ContainerRuntimeVersion, "containerd://2.4.2") {
		t.Errorf("node runs kubelet %q on %q, want v1.34.4 on containerd://2.4.2", info.KubeletVersion, info.ContainerRuntimeVersion)
	}

	start := time.Now()
	pod := hostPod("default", "hello", b.Busybox.Ref, "sh", "-c", "echo hello from the node; exec sleep 3600")
	if _, err = cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err = waitPod(ctx, cs, "default", "hello", 2*time.Minute, "running", running)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("host-network pod running %s after create", time.Since(start).Round(time.Millisecond))
	if pod.Spec.NodeName != b.Node.Name {
		t.Errorf("pod scheduled on %q, want %q", pod.Spec.NodeName, b.Node.Name)
	}
	if err := poll(ctx, 30*time.Second, "pod log", func(context.Context) error {
		log, err := b.podLog(pod, "main")
		if err != nil {
			return err
		}
		if !strings.Contains(log, "hello from the node") {
			return fmt.Errorf("log %q", log)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	// A pod with a network of its own cannot start here: the node has no pod network.
	own := hostPod("default", "own-network", b.Busybox.Ref, "sleep", "3600")
	own.Spec.HostNetwork = false
	if _, err := cs.CoreV1().Pods("default").Create(ctx, own, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := poll(ctx, time.Minute, "FailedCreatePodSandBox event for own-network", func(ctx context.Context) error {
		evs, err := cs.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=own-network"})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Reason == "FailedCreatePodSandBox" {
				t.Logf("own-network pod: %s", e.Message)
				return nil
			}
		}
		return fmt.Errorf("%d events", len(evs.Items))
	}); err != nil {
		t.Error(err)
	}
	for _, name := range []string{"hello", "own-network"} {
		if err := cs.CoreV1().Pods("default").Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
			t.Error(err)
		}
	}

	// Stopped with a pod still on the node: the node's shutdown ends it.
	if _, err := cs.CoreV1().Pods("default").Create(ctx, hostPod("default", "left-running", b.Busybox.Ref, "sleep", "3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := waitPod(ctx, cs, "default", "left-running", 2*time.Minute, "running", running); err != nil {
		t.Fatal(err)
	}
	closeAndCheckClean(t, ctx, b)
}
