package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// BulkOptions says how many pods CreatePods makes.
type BulkOptions struct {
	Pods             int    // host-network pod sandboxes running the pause image
	ContainersPerPod int    // containers per pod, running /pause from the pause image
	StartContainers  bool   // start them (otherwise they stay CREATED, still listed)
	Namespace        string // default "bench"
	Parallel         int    // concurrent creations; default 4
}

// Bulk lists what CreatePods made.
type Bulk struct {
	PodIDs       []string
	ContainerIDs []string
}

// CreatePods creates many sandboxes/containers straight on containerd (not through pullguard),
// e.g. so ListContainers/ListPodSandbox have something to return in benchmarks. Bed.Close (or
// RemovePods) removes them.
func (b *Bed) CreatePods(ctx context.Context, opts BulkOptions) (Bulk, error) {
	if opts.Namespace == "" {
		opts.Namespace = "bench"
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	c, err := DialCRI(b.Containerd.Socket)
	if err != nil {
		return Bulk{}, err
	}
	defer c.Close()
	var (
		mu   sync.Mutex
		out  Bulk
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, opts.Parallel)
	)
	for i := 0; i < opts.Pods; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			podID, ctrIDs, err := b.createPod(ctx, c, opts, i)
			mu.Lock()
			defer mu.Unlock()
			if podID != "" {
				out.PodIDs = append(out.PodIDs, podID)
			}
			out.ContainerIDs = append(out.ContainerIDs, ctrIDs...)
			if err != nil {
				errs = append(errs, err)
			}
		}(i)
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

func (b *Bed) createPod(ctx context.Context, c *CRIClient, opts BulkOptions, i int) (string, []string, error) {
	name := fmt.Sprintf("bulk-%d", i)
	logDir := filepath.Join(b.Dir, "podlogs", opts.Namespace+"_"+name)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return "", nil, fmt.Errorf("create pod %s: %w", name, err)
	}
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: opts.Namespace, Uid: opts.Namespace + "-" + name},
		Labels:       map[string]string{"io.kubernetes.pod.namespace": opts.Namespace, "io.kubernetes.pod.name": name},
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: b.CgroupParent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			},
		},
	}
	run, err := c.Runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
	if err != nil {
		return "", nil, fmt.Errorf("run pod %s: %w", name, err)
	}
	var ids []string
	for j := 0; j < opts.ContainersPerPod; j++ {
		cname := fmt.Sprintf("c%d", j)
		cr, err := c.Runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId: run.PodSandboxId,
			Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: cname},
				Image:    &runtimeapi.ImageSpec{Image: b.Pause.Ref},
				Command:  []string{"/pause"},
				LogPath:  cname + ".log",
			},
			SandboxConfig: podCfg,
		})
		if err != nil {
			return run.PodSandboxId, ids, fmt.Errorf("create container %s in %s: %w", cname, name, err)
		}
		ids = append(ids, cr.ContainerId)
		if opts.StartContainers {
			if _, err := c.Runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
				return run.PodSandboxId, ids, fmt.Errorf("start container %s in %s: %w", cname, name, err)
			}
		}
	}
	return run.PodSandboxId, ids, nil
}

// RemovePods stops and removes pod sandboxes (and their containers) straight on containerd.
func (b *Bed) RemovePods(ctx context.Context, podIDs []string) error {
	c, err := DialCRI(b.Containerd.Socket)
	if err != nil {
		return err
	}
	defer c.Close()
	var errs []error
	for _, id := range podIDs {
		if _, err := c.Runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
			errs = append(errs, fmt.Errorf("stop pod %s: %w", id, err))
			continue
		}
		if _, err := c.Runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			errs = append(errs, fmt.Errorf("remove pod %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}
