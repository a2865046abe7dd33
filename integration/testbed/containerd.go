package testbed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Containerd is a running containerd v2 whose CRI plugin serves on Socket. Everything it writes
// lives under Dir except shim sockets (/run/containerd/s, removed when shims exit) and cgroups
// (under the bed's cgroup parent, removed by the bed).
type Containerd struct {
	Socket    string // unix socket path, CRI and containerd API
	NRISocket string // NRI's socket ("" when NRI is off)
	Dir       string
	Config    string // generated config.toml
	tools     Tools
	proc      *Process
}

// ContainerdOptions configures StartContainerd.
type ContainerdOptions struct {
	// RegistryHost ("127.0.0.1:PORT") is reached over plain HTTP through a certs.d hosts.toml.
	RegistryHost string
	// SandboxImage is the pinned pause image (in the registry above).
	SandboxImage string
	// NoNRI leaves NRI disabled (pull-only tests, and runtimes without NRI validation).
	NoNRI bool
	// NRINoValidator enables NRI with its default validator off, so no plugin is required:
	// containerd's own default, the reference pullguard's gate is measured against.
	NRINoValidator bool
	// NRIRequestTimeout is NRI's plugin_request_timeout; default 2s (containerd's).
	NRIRequestTimeout string
}

// NRIPlugin is the NRI plugin name the bed's containerd requires.
const NRIPlugin = "pullguard"

// StartContainerd writes a config for dir and starts containerd, returning once its CRI is ready.
func StartContainerd(ctx context.Context, tools Tools, dir string, opts ContainerdOptions) (*Containerd, error) {
	c := &Containerd{Socket: filepath.Join(dir, "ctd.sock"), Dir: dir, Config: filepath.Join(dir, "config.toml"), tools: tools}
	if !opts.NoNRI {
		c.NRISocket = filepath.Join(dir, "nri.sock")
	}
	if err := c.writeConfig(opts); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	if err := c.Start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Containerd) writeConfig(opts ContainerdOptions) error {
	for _, d := range []string{"root", "state", "opt", "runc", "cni", "cdi", "tmp", "nri-plugins", "nri-conf"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o711); err != nil {
			return err
		}
	}
	certs := filepath.Join(c.Dir, "certs.d")
	if opts.RegistryHost != "" {
		hostDir := filepath.Join(certs, opts.RegistryHost)
		if err := os.MkdirAll(hostDir, 0o755); err != nil {
			return err
		}
		hosts := fmt.Sprintf("server = \"http://%[1]s\"\n\n[host.\"http://%[1]s\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n", opts.RegistryHost)
		if err := os.WriteFile(filepath.Join(hostDir, "hosts.toml"), []byte(hosts), 0o644); err != nil {
			return err
		}
	}
	p := func(s string) string { return filepath.Join(c.Dir, s) }
	// Notes on the non-defaults (see shared TESTBED.md):
	// - restrict_oom_score_adj: runc cannot raise oom_score_adj without CAP_SYS_RESOURCE.
	// - opt path, runc Root, netns under state, CNI/CDI dirs, temp: keep writes under Dir.
	// - NRI on with its socket under Dir, its default validator requiring pullguard (as
	//   `pullguard install` sets it), or not requiring anything (NRINoValidator), or off for
	//   pull-only beds.
	// - no CNI config: only host-network pods, which need none.
	disabled := `"io.containerd.internal.v1.tracing"`
	nri := ""
	if opts.NoNRI {
		disabled += `, "io.containerd.nri.v1.nri"`
	} else {
		timeout := opts.NRIRequestTimeout
		if timeout == "" {
			timeout = "2s"
		}
		validator := fmt.Sprintf(`
    [plugins.'io.containerd.nri.v1.nri'.default_validator]
      enable = true
      required_plugins = [%q]
`, NRIPlugin)
		if opts.NRINoValidator {
			validator = "\n"
		}
		nri = fmt.Sprintf(`
  [plugins.'io.containerd.nri.v1.nri']
    disable = false
    socket_path = %q
    plugin_path = %q
    plugin_config_path = %q
    plugin_registration_timeout = "5s"
    plugin_request_timeout = %q%s`, c.NRISocket, p("nri-plugins"), p("nri-conf"), timeout, validator)
	}
	cfg := fmt.Sprintf(`version = 4
root = %q
state = %q
temp = %q
disabled_plugins = [%s]

[debug]
  level = "info"

[plugins]
  # Version 4 configures the listeners as server plugins; the top-level [grpc] is ignored.
  [plugins.'io.containerd.server.v1.grpc']
    address = %q
  [plugins.'io.containerd.server.v1.ttrpc']
    address = %q
  [plugins.'io.containerd.internal.v1.opt']
    path = %q

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = %q
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = %q

  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    enable_cdi = false
    cdi_spec_dirs = [%q]
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [%q]
      conf_dir = %q
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = %q
          Root = %q
          SystemdCgroup = false

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
%s`, p("root"), p("state"), p("tmp"), disabled, c.Socket, c.Socket+".ttrpc", p("opt"),
		opts.SandboxImage, certs, p("cdi"), p("cni"), p("cni"), c.tools.Runc, p("runc"), nri)
	return os.WriteFile(c.Config, []byte(cfg), 0o644)
}

// Start (re)starts containerd with the written config and waits until its CRI is ready.
func (c *Containerd) Start(ctx context.Context) error {
	if c.proc != nil {
		if exited, _ := c.proc.Exited(); !exited {
			return fmt.Errorf("start containerd: already running (pid %d)", c.proc.Pid())
		}
	}
	p, err := startProcess("containerd", filepath.Join(c.Dir, "containerd.log"), childEnv(c.tools), c.tools.Containerd, "--config", c.Config)
	if err != nil {
		return err
	}
	c.proc = p
	if err := waitFor(ctx, 30*time.Second, p, "containerd CRI on "+c.Socket, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return criReady(ctx, c.Socket)
	}); err != nil {
		_ = p.Stop(5 * time.Second)
		return fmt.Errorf("start containerd: %w", err)
	}
	return nil
}

// Stop stops containerd (not its shims: remove pods first, see Bed.Close).
func (c *Containerd) Stop() error {
	if c.proc == nil {
		return nil
	}
	return c.proc.Stop(10 * time.Second)
}

// Process is containerd's process (logs, pid).
func (c *Containerd) Process() *Process { return c.proc }

// killShims ends shims started by this containerd that are still alive after their pods were
// removed (or containerd was killed). They are recognised by this containerd's socket in their
// command line, so shims of any other containerd on the machine are never touched.
func (c *Containerd) killShims() []int {
	return killByCmdline(func(args []string) bool {
		if len(args) == 0 || !strings.HasSuffix(args[0], "containerd-shim-runc-v2") {
			return false
		}
		for i, a := range args {
			if a == "-address" && i+1 < len(args) && args[i+1] == c.Socket {
				return true
			}
		}
		return false
	})
}
