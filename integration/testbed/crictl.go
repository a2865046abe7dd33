package testbed

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/pullguard/pullguard/daemonset/hoststate"
)

// Crictl runs crictl the way kubelet is configured: the runtime service on Endpoint and the
// image service on ImageEndpoint (the same socket when that is empty).
type Crictl struct {
	Bin           string
	Endpoint      string // runtime service: unix socket path
	ImageEndpoint string // image service: unix socket path; "" = Endpoint
	Config        string // an empty crictl.yaml so /etc/crictl.yaml is never read
	Env           []string
	Timeout       time.Duration // crictl's per-call --timeout; default 30s
}

// NewCrictl prepares a crictl for socket (both services), writing its (empty) config under dir.
func NewCrictl(tools Tools, dir, socket string) (*Crictl, error) {
	return NewSplitCrictl(tools, dir, socket, socket)
}

// NewSplitCrictl prepares a crictl whose runtime calls go to runtime and image calls to image,
// as kubelet with imageServiceEndpoint set.
func NewSplitCrictl(tools Tools, dir, runtime, image string) (*Crictl, error) {
	cfg := filepath.Join(dir, "crictl-"+filepath.Base(image)+".yaml")
	if err := os.WriteFile(cfg, []byte("debug: false\npull-image-on-create: false\n"), 0o644); err != nil {
		return nil, fmt.Errorf("write crictl config: %w", err)
	}
	return &Crictl{Bin: tools.Crictl, Endpoint: runtime, ImageEndpoint: image, Config: cfg, Env: childEnv(tools)}, nil
}

func (c *Crictl) endpoints() (runtime, image string) {
	runtime = "unix://" + c.Endpoint
	image = runtime
	if c.ImageEndpoint != "" {
		image = "unix://" + c.ImageEndpoint
	}
	return runtime, image
}

// Result is one crictl invocation.
type Result struct {
	Args   []string
	Stdout string
	Stderr string
	Err    error // non-nil on a non-zero exit
	Took   time.Duration
}

// Output is stdout and stderr together, for matching messages.
func (r Result) Output() string { return r.Stdout + r.Stderr }

// String renders the command line and its outcome, for failure messages and the demo.
func (r Result) String() string {
	s := "$ crictl " + strings.Join(r.Args, " ") + "\n" + r.Stdout + r.Stderr
	if r.Err != nil {
		s += "(" + r.Err.Error() + ")\n"
	}
	return s
}

// Command is the full command line crictl runs with.
func (c *Crictl) Command(args ...string) []string {
	return append([]string{c.Bin}, c.fullArgs(args)...)
}

// Display is the command line as a person would type it (no config or timeout flags).
func (c *Crictl) Display(args ...string) string {
	rt, img := c.endpoints()
	return strings.Join(append([]string{"crictl", "--runtime-endpoint", rt, "--image-endpoint", img}, args...), " ")
}

func (c *Crictl) fullArgs(args []string) []string {
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	rt, img := c.endpoints()
	return append([]string{"--config", c.Config, "--runtime-endpoint", rt, "--image-endpoint", img, "--timeout", timeout.String()}, args...)
}

// Run runs crictl with args; a non-zero exit is reported in Result.Err, not as a panic.
func (c *Crictl) Run(ctx context.Context, args ...string) Result {
	cmd := exec.CommandContext(ctx, c.Bin, c.fullArgs(args)...)
	cmd.Env = c.Env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("crictl %s: %w", strings.Join(args, " "), err)
	}
	return Result{Args: args, Stdout: out.String(), Stderr: errb.String(), Err: err, Took: time.Since(start)}
}

// Start starts a long-running crictl (e.g. `events`); the caller stops it with Stop.
func (c *Crictl) Start(args ...string) (*exec.Cmd, *SafeBuffer, error) {
	cmd := exec.Command(c.Bin, c.fullArgs(args)...)
	cmd.Env = c.Env
	buf := &SafeBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start crictl %s: %w", strings.Join(args, " "), err)
	}
	return cmd, buf, nil
}

// PodConfig is the subset of a CRI PodSandboxConfig the bed writes for crictl (JSON).
type PodConfig struct {
	Name      string
	Namespace string
	UID       string
	Labels    map[string]string
}

// WritePodConfig writes a pod sandbox config crictl accepts (`runp`, `pull --pod-config`,
// `create`): host network (no CNI here), cgroup parent under the bed's own cgroup.
func (b *Bed) WritePodConfig(p PodConfig) (string, error) {
	if p.UID == "" {
		p.UID = p.Namespace + "-" + p.Name
	}
	labels := map[string]string{"io.kubernetes.pod.namespace": p.Namespace, "io.kubernetes.pod.name": p.Name}
	for k, v := range p.Labels {
		labels[k] = v
	}
	cfg := map[string]any{
		"metadata":      map[string]any{"name": p.Name, "namespace": p.Namespace, "uid": p.UID, "attempt": 0},
		"labels":        labels,
		"log_directory": filepath.Join(b.Dir, "podlogs", p.Namespace+"_"+p.Name),
		"linux": map[string]any{
			"cgroup_parent":    b.CgroupParent,
			"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}},
		},
	}
	if err := os.MkdirAll(filepath.Join(b.Dir, "podlogs", p.Namespace+"_"+p.Name), 0o755); err != nil {
		return "", fmt.Errorf("create pod log dir: %w", err)
	}
	return b.writeJSON("pod-"+p.Namespace+"-"+p.Name+".json", cfg)
}

// ContainerConfig is the subset of a CRI ContainerConfig the bed writes for crictl.
type ContainerConfig struct {
	Name    string
	Image   string
	Command []string
	Args    []string
}

// WriteContainerConfig writes a container config crictl accepts; logs go to Name.log in the
// pod's log directory.
func (b *Bed) WriteContainerConfig(c ContainerConfig) (string, error) {
	cfg := map[string]any{
		"metadata": map[string]any{"name": c.Name, "attempt": 0},
		"image":    map[string]any{"image": c.Image},
		"command":  c.Command,
		"args":     c.Args,
		"log_path": c.Name + ".log",
		"linux":    map[string]any{},
	}
	return b.writeJSON(fmt.Sprintf("ctr-%s-%d.json", c.Name, time.Now().UnixNano()), cfg)
}

func (b *Bed) writeJSON(name string, v any) (string, error) {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return "", fmt.Errorf("encode %s: %w", name, err)
	}
	dir := filepath.Join(b.Dir, "cfg")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	// Parallel tests of one bed may write the same pod's config while crictl
	// reads it: a file truncated and rewritten in place was once read empty.
	p := filepath.Join(dir, name)
	if err := hoststate.WriteFileAtomic(p, data, 0o644); err != nil {
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	return p, nil
}

// Ctr runs containerd's own client against the bed's containerd in the CRI namespace (k8s.io),
// bypassing CRI entirely: the ground truth of what containerd holds.
func (b *Bed) Ctr(ctx context.Context, args ...string) Result {
	full := append([]string{"--address", b.Containerd.Socket, "--namespace", "k8s.io"}, args...)
	cmd := exec.CommandContext(ctx, b.Tools.Ctr, full...)
	cmd.Env = childEnv(b.Tools)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("ctr %s: %w", strings.Join(args, " "), err)
	}
	return Result{Args: append([]string{"(ctr)"}, args...), Stdout: out.String(), Stderr: errb.String(), Err: err}
}

// ContainerdHasImage reports whether containerd (asked directly with ctr) holds an image named
// ref, or an image with that name's repository at any tag or digest when anyTag is set.
func (b *Bed) ContainerdHasImage(ctx context.Context, ref string, anyTag bool) (bool, error) {
	r := b.Ctr(ctx, "images", "ls", "-q")
	if r.Err != nil {
		return false, fmt.Errorf("list images: %w: %s", r.Err, r.Output())
	}
	repo := ref
	if i := strings.LastIndex(repo, "@"); i >= 0 {
		repo = repo[:i]
	} else if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	for _, name := range strings.Fields(r.Stdout) {
		if name == ref {
			return true, nil
		}
		if anyTag && (strings.HasPrefix(name, repo+":") || strings.HasPrefix(name, repo+"@")) {
			return true, nil
		}
	}
	return false, nil
}
