package testbed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"
)

// Options configures Start.
type Options struct {
	Logger *slog.Logger // nil: discard
	// RegistryAuth, if set, makes the registry require this user (trust tests with credentials).
	RegistryAuth *BasicAuth
	// PullguardBin is a prebuilt pullguard (default: env PULLGUARD_BIN, else built on first use).
	PullguardBin string
	// Keep leaves the directory in place after Close (for debugging); env PULLGUARD_TESTBED_KEEP=1 too.
	Keep bool
	// NRI runs containerd with NRI and its default validator requiring pullguard, as
	// `pullguard install` configures a node: creates are refused unless a pullguard is
	// registered. Without it containerd has no NRI and pullguards run pull-only.
	NRI bool
	// NRIRequestTimeout is containerd's plugin_request_timeout (default 2s).
	NRIRequestTimeout string
}

// Bed is one registry + containerd pair under Dir, with the pause image and a runnable busybox
// image already in the registry and the pause image already in containerd.
type Bed struct {
	Dir          string // short path under /tmp: unix socket paths must stay below 108 bytes
	Tools        Tools
	Registry     *Registry
	Containerd   *Containerd
	Crictl       *Crictl // straight to containerd, bypassing pullguard
	CgroupParent string  // every pod the bed writes configs for lives below it
	Pause        PushedImage
	Busybox      PushedImage // runnable: sh, sleep, echo, ...
	Repo         string      // repository root

	log  *slog.Logger
	keep bool

	mu         sync.Mutex
	pgBin      string
	pullguards []*Pullguard
	extra      []extraContainerd
	seq        int
}

// extraContainerd is a containerd started by AddContainerd, closed with the bed's own.
type extraContainerd struct {
	ctd    *Containerd
	crictl *Crictl
}

// Start brings a bed up: pause binary built, registry started, pause and busybox images pushed,
// containerd started and the pause image pulled into it. On error everything started is stopped.
func Start(ctx context.Context, opts Options) (_ *Bed, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("start test bed: needs root (containerd, runc and overlay mounts)")
	}
	tools, err := FindTools()
	if err != nil {
		return nil, err
	}
	repo, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("/tmp", "pgtb-")
	if err != nil {
		return nil, fmt.Errorf("create bed dir: %w", err)
	}
	b := &Bed{
		Dir: dir, Tools: tools, Repo: repo, log: log,
		CgroupParent: "/" + filepath.Base(dir),
		keep:         opts.Keep || os.Getenv("PULLGUARD_TESTBED_KEEP") == "1",
		pgBin:        opts.PullguardBin,
	}
	defer func() {
		if err != nil {
			if cerr := b.Close(context.WithoutCancel(ctx)); cerr != nil {
				log.Warn("cleanup after failed start", "err", cerr)
			}
		}
	}()
	start := time.Now()

	pauseBin := filepath.Join(dir, "bin", "pause")
	if err := b.goBuildEnv(ctx, []string{"CGO_ENABLED=0"}, pauseBin, "./integration/testbed/pause"); err != nil {
		return nil, err
	}
	if b.Registry, err = StartRegistry(ctx, tools, filepath.Join(dir, "reg"), opts.RegistryAuth); err != nil {
		return nil, err
	}
	log.Info("registry up", "host", b.Registry.Host)
	pauseImg, err := PauseImage(pauseBin)
	if err != nil {
		return nil, err
	}
	if b.Pause, err = b.Registry.Push(ctx, "testbed/pause:1", pauseImg); err != nil {
		return nil, err
	}
	bb, err := RunnableImage(tools.Busybox, "busybox")
	if err != nil {
		return nil, err
	}
	if b.Busybox, err = b.Registry.Push(ctx, "testbed/busybox:1", bb); err != nil {
		return nil, err
	}
	if b.Containerd, err = StartContainerd(ctx, tools, filepath.Join(dir, "ctd"), ContainerdOptions{
		RegistryHost: b.Registry.Host, SandboxImage: b.Pause.Ref,
		NoNRI: !opts.NRI, NRIRequestTimeout: opts.NRIRequestTimeout,
	}); err != nil {
		return nil, err
	}
	log.Info("containerd up", "socket", b.Containerd.Socket)
	if b.Crictl, err = NewCrictl(tools, dir, b.Containerd.Socket); err != nil {
		return nil, err
	}
	// The sandbox image must be present before the first RunPodSandbox (and a registry with
	// auth would refuse containerd's anonymous pull of it).
	if r := b.Crictl.Run(ctx, append(append([]string{"pull"}, b.CredsArgs()...), b.Pause.Ref)...); r.Err != nil {
		return nil, fmt.Errorf("pull pause image into containerd: %w\n%s", r.Err, r.Output())
	}
	log.Info("bed ready", "dir", dir, "took", time.Since(start).Round(time.Millisecond))
	return b, nil
}

// AddContainerd starts another containerd under Dir/name, on the bed's registry and with the
// bed's pause image pulled into it, for comparing containerd configurations on one machine in
// one run. The bed's CgroupParent holds its pods too; Close stops it with the bed's own.
func (b *Bed) AddContainerd(ctx context.Context, name string, opts ContainerdOptions) (*Containerd, *Crictl, error) {
	opts.RegistryHost, opts.SandboxImage = b.Registry.Host, b.Pause.Ref
	dir := filepath.Join(b.Dir, name)
	ctd, err := StartContainerd(ctx, b.Tools, dir, opts)
	if err != nil {
		return nil, nil, err
	}
	crictl, err := NewCrictl(b.Tools, dir, ctd.Socket)
	b.mu.Lock()
	b.extra = append(b.extra, extraContainerd{ctd, crictl})
	b.mu.Unlock()
	if err != nil {
		return nil, nil, err
	}
	if r := crictl.Run(ctx, append(append([]string{"pull"}, b.CredsArgs()...), b.Pause.Ref)...); r.Err != nil {
		return nil, nil, fmt.Errorf("pull pause image into containerd %s: %w\n%s", name, r.Err, r.Output())
	}
	b.log.Info("containerd up", "name", name, "socket", ctd.Socket)
	return ctd, crictl, nil
}

// CredsArgs are `crictl pull`'s --creds flag for the registry's user (nothing for an open
// registry); they go after "pull".
func (b *Bed) CredsArgs() []string {
	if b.Registry == nil || b.Registry.Auth == nil {
		return nil
	}
	return []string{"--creds", b.Registry.Auth.Username + ":" + b.Registry.Auth.Password}
}

// goBuild builds a package of the repository into out; flags are go build flags.
func (b *Bed) goBuild(ctx context.Context, out, pkg string, flags ...string) error {
	return b.goBuildEnv(ctx, nil, out, pkg, flags...)
}

func (b *Bed) goBuildEnv(ctx context.Context, env []string, out, pkg string, flags ...string) error {
	args := append(append([]string{"build"}, flags...), "-o", out, pkg)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = b.Repo
	cmd.Env = append(os.Environ(), env...)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, msg)
	}
	return nil
}

// Close stops everything in the order that leaves nothing behind: pullguards, then pods (shims
// outlive containerd), containerd, stray shims, the registry; then unmounts leftovers under Dir,
// removes the bed's cgroups and Dir itself.
func (b *Bed) Close(ctx context.Context) error {
	var errs []error
	step := time.Now()
	took := func(what string) {
		b.log.Debug("bed close", "step", what, "took", time.Since(step).Round(time.Millisecond))
		step = time.Now()
	}
	b.mu.Lock()
	pgs := b.pullguards
	b.pullguards = nil
	b.mu.Unlock()
	for _, p := range pgs {
		if err := p.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	took("stop pullguards")
	b.mu.Lock()
	ctds := append([]extraContainerd{{b.Containerd, b.Crictl}}, b.extra...)
	b.extra = nil
	b.mu.Unlock()
	for _, c := range ctds {
		if c.ctd != nil && c.ctd.proc != nil && c.crictl != nil {
			if exited, _ := c.ctd.proc.Exited(); !exited {
				rctx, cancel := context.WithTimeout(ctx, time.Minute)
				if r := c.crictl.Run(rctx, "rmp", "-fa"); r.Err != nil {
					errs = append(errs, fmt.Errorf("remove pods of %s: %w: %s", c.ctd.Socket, r.Err, r.Output()))
				}
				cancel()
			}
		}
	}
	took("remove pods")
	for _, c := range ctds {
		if c.ctd == nil {
			continue
		}
		if err := c.ctd.Stop(); err != nil {
			errs = append(errs, err)
		}
		if pids := c.ctd.killShims(); len(pids) > 0 {
			b.log.Warn("killed leftover shims", "pids", pids)
		}
	}
	took("stop containerd")
	if b.Registry != nil {
		if err := b.Registry.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	took("stop registry")
	if err := unmountUnder(b.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroups(b.CgroupParent); err != nil {
		errs = append(errs, err)
	}
	if !b.keep {
		if err := os.RemoveAll(b.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove bed dir: %w", err))
		}
	}
	return errors.Join(errs...)
}

// nextSeq numbers per-bed things (pullguard dirs) so paths stay short and unique.
func (b *Bed) nextSeq() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	return b.seq
}
