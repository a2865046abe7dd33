package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// MakeImage runs `make image` in the repository, as daemonset/README.md tells an admin to:
// it builds the static binary (into binDir, stamped with version) and pushes the image to
// ref. It returns the pushed reference with its digest (REF@sha256:...).
func MakeImage(ctx context.Context, repo, ref, binDir, version string) (string, error) {
	cmd := exec.CommandContext(ctx, "make", "--no-print-directory", "-C", repo, "image", "REGISTRY="+ref, "BIN="+binDir, "VERSION="+version)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("make image REGISTRY=%s: %w\n%s", ref, err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.HasPrefix(line, ref+"@sha256:") {
			return line, nil
		}
	}
	return "", fmt.Errorf("make image REGISTRY=%s: no pushed digest in its output:\n%s", ref, out)
}

// Manifests is a copy of daemonset/, edited the way daemonset/README.md tells an admin
// (`kustomize edit set image`, `kustomize edit add component`, node/config.toml and
// policies/ reviewed and changed), then built with kustomize.
type Manifests struct {
	Dir string
}

// CopyManifests copies the repository's daemonset/ into dir.
func CopyManifests(repo, dir string) (*Manifests, error) {
	if err := os.CopyFS(dir, os.DirFS(filepath.Join(repo, "daemonset"))); err != nil {
		return nil, fmt.Errorf("copy daemonset/: %w", err)
	}
	return &Manifests{Dir: dir}, nil
}

func (m *Manifests) editKustomization(edit func(*types.Kustomization) error) error {
	p := filepath.Join(m.Dir, "kustomization.yaml")
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	var k types.Kustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		return fmt.Errorf("read kustomization.yaml: %w", err)
	}
	if err := edit(&k); err != nil {
		return err
	}
	out, err := yaml.Marshal(&k)
	if err != nil {
		return err
	}
	return os.WriteFile(p, out, 0o644)
}

// SetImage is `kustomize edit set image NAME=NEWNAME:TAG`.
func (m *Manifests) SetImage(name, newName, tag string) error {
	return m.editKustomization(func(k *types.Kustomization) error {
		for i := range k.Images {
			if k.Images[i].Name == name {
				k.Images[i].NewName, k.Images[i].NewTag, k.Images[i].Digest = newName, tag, ""
				return nil
			}
		}
		k.Images = append(k.Images, types.Image{Name: name, NewName: newName, NewTag: tag})
		return nil
	})
}

// AddComponent is `kustomize edit add component components/NAME`.
func (m *Manifests) AddComponent(name string) error {
	return m.editKustomization(func(k *types.Kustomization) error {
		c := "components/" + name
		if !slices.Contains(k.Components, c) {
			k.Components = append(k.Components, c)
		}
		return nil
	})
}

// WriteFile replaces a file of the copy (node/config.toml, a policy).
func (m *Manifests) WriteFile(rel, content string) error {
	return os.WriteFile(filepath.Join(m.Dir, rel), []byte(content), 0o644)
}

// Build is `kustomize build`: the objects `kubectl apply -k` would send, in kustomize's order.
func (m *Manifests) Build() ([]*unstructured.Unstructured, error) {
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), m.Dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", m.Dir, err)
	}
	var out []*unstructured.Unstructured
	for _, r := range resMap.Resources() {
		// Through JSON: kustomize's maps hold Go ints, which unstructured objects cannot copy.
		j, err := r.MarshalJSON()
		if err != nil {
			return nil, err
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			return nil, fmt.Errorf("decode %s %s: %w", r.GetKind(), r.GetName(), err)
		}
		out = append(out, u)
	}
	return out, nil
}

// hostPort splits an API server URL into its host and port.
func hostPort(u string) (string, int, error) {
	pu, err := url.Parse(u)
	if err != nil {
		return "", 0, err
	}
	host, p, err := net.SplitHostPort(pu.Host)
	if err != nil {
		return "", 0, fmt.Errorf("API server URL %s: %w", u, err)
	}
	port, err := strconv.Atoi(p)
	return host, port, err
}

// ForHostNetworkNode adapts the DaemonSet to this bed's node, which has no pod network (see
// README.md): its pod shares the node's network, so every address its containers listen on
// (--metrics-address, --health-address) moves to a free loopback port of the machine, with
// the container ports and probes that name it; and the policy-sync container reaches the API
// server where it listens (the kubernetes Service's cluster IP is routed nowhere here, there
// being no kube-proxy). ports gives the free ports to use.
func ForHostNetworkNode(objs []*unstructured.Unstructured, apiHost string, apiPort int, ports []int) error {
	for _, o := range objs {
		if o.GetKind() != "DaemonSet" || o.GetName() != "pullguard" {
			continue
		}
		var ds appsv1.DaemonSet
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &ds); err != nil {
			return fmt.Errorf("decode DaemonSet: %w", err)
		}
		spec := &ds.Spec.Template.Spec
		spec.HostNetwork = true
		spec.DNSPolicy = corev1.DNSClusterFirstWithHostNet
		for i := range spec.Containers {
			c := &spec.Containers[i]
			moved := map[int32]int32{} // old port -> new port
			for j := 0; j < len(c.Args); j++ {
				flag, value, inline := strings.Cut(c.Args[j], "=")
				if flag != "--metrics-address" && flag != "--health-address" {
					continue
				}
				if !inline {
					if j+1 >= len(c.Args) {
						return fmt.Errorf("container %s: %s without a value", c.Name, flag)
					}
					value = c.Args[j+1]
				}
				_, old, err := net.SplitHostPort(value)
				if err != nil {
					return fmt.Errorf("container %s: %s %q: %w", c.Name, flag, value, err)
				}
				if len(ports) == 0 {
					return errors.New("not enough free ports for the DaemonSet's listeners")
				}
				oldPort, _ := strconv.Atoi(old)
				moved[int32(oldPort)] = int32(ports[0])
				addr := "127.0.0.1:" + strconv.Itoa(ports[0])
				ports = ports[1:]
				if inline {
					c.Args[j] = flag + "=" + addr
				} else {
					c.Args[j+1] = addr
				}
			}
			for k := range c.Ports {
				if p, ok := moved[c.Ports[k].ContainerPort]; ok {
					c.Ports[k].ContainerPort, c.Ports[k].HostPort = p, p
				}
			}
			for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
				if p == nil || p.HTTPGet == nil {
					continue
				}
				if np, ok := moved[p.HTTPGet.Port.IntVal]; ok {
					p.HTTPGet.Host, p.HTTPGet.Port.IntVal = "127.0.0.1", np
				}
			}
			if c.Name == "policy-sync" {
				c.Env = append(c.Env,
					corev1.EnvVar{Name: "KUBERNETES_SERVICE_HOST", Value: apiHost},
					corev1.EnvVar{Name: "KUBERNETES_SERVICE_PORT", Value: strconv.Itoa(apiPort)})
			}
		}
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&ds)
		if err != nil {
			return err
		}
		o.Object = m
		return nil
	}
	return fmt.Errorf("no DaemonSet pullguard among %d objects", len(objs))
}
