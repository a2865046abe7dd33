package testbed_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullguard/pullguard/integration/testbed"
)

// These tests check the bed itself, straight against containerd (no pullguard involved).

func startBed(t *testing.T) *testbed.Bed {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs containerd, registry and crictl (skipped with -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b, err := testbed.Start(ctx, testbed.Options{})
	if errors.Is(err, testbed.ErrToolsMissing) {
		t.Fatalf("%v", err)
	}
	if err != nil {
		t.Fatalf("start bed: %v", err)
	}
	return b
}

func TestBedPodLifecycleDirect(t *testing.T) {
	b := startBed(t)
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = b.Close(context.Background())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := b.Crictl

	tiny, err := testbed.TinyImage("direct")
	if err != nil {
		t.Fatal(err)
	}
	img, err := b.Registry.Push(ctx, "direct/tiny:1", tiny)
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Run(ctx, "pull", img.Ref); r.Err != nil {
		t.Fatalf("pull: %v", r)
	}
	if r := c.Run(ctx, "inspecti", "-o", "go-template", "--template", "{{.status.id}}", img.Ref); r.Err != nil || !strings.Contains(r.Stdout, img.ID) {
		t.Fatalf("inspecti: want id %s: %v", img.ID, r)
	}

	podCfg, err := b.WritePodConfig(testbed.PodConfig{Name: "p1", Namespace: "direct"})
	if err != nil {
		t.Fatal(err)
	}
	ctrCfg, err := b.WriteContainerConfig(testbed.ContainerConfig{Name: "c1", Image: b.Busybox.Ref,
		Command: []string{"sh", "-c", "echo hello-from-busybox; exec sleep 3600"}})
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Run(ctx, "pull", b.Busybox.Ref); r.Err != nil {
		t.Fatalf("pull busybox: %v", r)
	}
	r := c.Run(ctx, "run", ctrCfg, podCfg)
	if r.Err != nil {
		t.Fatalf("run: %v\ncontainerd log:\n%s", r, b.Containerd.Process().LogTail(3000))
	}
	ctrID := strings.TrimSpace(r.Stdout)
	if r := c.Run(ctx, "exec", ctrID, "cat", "/etc/marker"); r.Err != nil || !strings.Contains(r.Stdout, "busybox") {
		t.Fatalf("exec: %v", r)
	}
	if err := pollUntil(ctx, func() bool {
		return strings.Contains(c.Run(ctx, "logs", ctrID).Output(), "hello-from-busybox")
	}); err != nil {
		t.Fatalf("logs never showed the greeting: %v", c.Run(ctx, "logs", ctrID))
	}

	bulk, err := b.CreatePods(ctx, testbed.BulkOptions{Pods: 3, ContainersPerPod: 1})
	if err != nil {
		t.Fatalf("bulk: %v", err)
	}
	if len(bulk.PodIDs) != 3 || len(bulk.ContainerIDs) != 3 {
		t.Fatalf("bulk made %d pods %d containers, want 3/3", len(bulk.PodIDs), len(bulk.ContainerIDs))
	}
	if r := c.Run(ctx, "ps", "-a", "-q"); len(strings.Fields(r.Stdout)) != 4 {
		t.Fatalf("want 4 containers listed: %v", r)
	}

	dir, sock, cg := b.Dir, b.Containerd.Socket, b.CgroupParent
	closed = true
	if err := b.Close(context.Background()); err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("bed dir %s still exists after Close (err %v)", dir, err)
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/*" + cg); len(left) > 0 {
		t.Errorf("cgroups left after Close: %v", left)
	}
	if procs := procsMentioning(sock); len(procs) > 0 {
		t.Errorf("processes still mention %s after Close: %v", sock, procs)
	}
}

func pollUntil(ctx context.Context, cond func() bool) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

func procsMentioning(s string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			out = append(out, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

// TestBedRegistryAuth: a bed whose registry requires a user still starts (pause pulled with
// credentials), pushes with them, and containerd pulls only with them.
func TestBedRegistryAuth(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs containerd, registry and crictl (skipped with -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b, err := testbed.Start(ctx, testbed.Options{RegistryAuth: &testbed.BasicAuth{Username: "puller", Password: "s3cret"}})
	if err != nil {
		t.Fatalf("start bed with registry auth: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(context.Background()); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	img, err := testbed.TinyImage("auth")
	if err != nil {
		t.Fatal(err)
	}
	p, err := b.Registry.Push(ctx, "auth/tiny:1", img)
	if err != nil {
		t.Fatal(err)
	}
	if r := b.Crictl.Run(ctx, "pull", p.Ref); r.Err == nil {
		t.Fatalf("anonymous pull from a registry requiring auth succeeded: %v", r)
	}
	if r := b.Crictl.Run(ctx, append(append([]string{"pull"}, b.CredsArgs()...), p.Ref)...); r.Err != nil {
		t.Fatalf("pull with credentials: %v", r)
	}
}
