// Package installer puts pullguard on a node as a host service, makes
// containerd require its NRI plugin and points kubelet's image service at
// it, and undoes all of it. It works on the node's root filesystem mounted
// at a host root (the DaemonSet's init container mounts / at /host) and
// drives systemd through a ServiceManager.
//
// Order matters. Once containerd's NRI default validator requires
// pullguard, containerd refuses every container create while pullguard's
// plugin is not registered; and kubelet cannot pull while its image
// endpoint is dead. So install validates and plans everything before it
// writes anything, then writes pullguard's files, then containerd's NRI
// settings (restarting containerd), starts pullguard and waits until its
// plugin is registered, and only then points kubelet's image service at
// it. kubelet's runtime endpoint stays on containerd throughout. Uninstall
// goes the other way: kubelet first, then containerd, then pullguard.
package installer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/pullguard/pullguard/config"
	"github.com/pullguard/pullguard/daemonset/bundle"
	"github.com/pullguard/pullguard/daemonset/hoststate"
)

// Validator checks a config bundle, with the node's settings substituted,
// before it goes anywhere near the host. (*bundle.Bundle).Validate is the
// real one.
type Validator func(ctx context.Context, b *bundle.Bundle, node hoststate.Node) error

// Options configures Install and Uninstall.
type Options struct {
	Root hoststate.Root // the node's / as mounted here

	Binary      string // pullguard binary to copy to the host (Install)
	ConfigFile  string // config.toml to install (Install)
	PoliciesDir string // policy files to install; empty: none (Install)
	// TruststoreDir holds <signer>.pem files to install as trust stores;
	// empty or missing: trust stores are left to the administrator.
	TruststoreDir string
	Validate      Validator

	// KubeletConfig is the host path of kubelet's KubeletConfiguration when
	// it is not in a usual place; empty probes the usual places.
	KubeletConfig string
	// ContainerdConfig is the host path of containerd's main config file;
	// empty means DefaultContainerdConfig.
	ContainerdConfig string
	// PullOnly installs pull-time enforcement alone: containerd's config
	// is not touched and [nri] mode is "pull-only". For runtimes without
	// NRI validation; what it leaves unchecked is in PullOnlyGaps.
	PullOnly bool

	Services ServiceManager
	Probe    Prober
	// ReadyTimeout bounds the wait for pullguard to be ready; zero means
	// 60s.
	ReadyTimeout time.Duration
	Logger       *slog.Logger
}

// maxBinaryBytes bounds the binary we copy.
const maxBinaryBytes = 512 << 20

// runtimeTimeout bounds the question to the runtime about its version.
const runtimeTimeout = 10 * time.Second

// PullOnlyGaps is what pull-only mode leaves unchecked: containers are
// created without pullguard being asked.
var PullOnlyGaps = []string{
	"images already on the node start unchecked",
	"images loaded (ctr import) or re-tagged (ctr image tag) on the node start unchecked",
	"an image pulled for one namespace starts unchecked in another",
	"image volumes are not checked",
	"the sandbox (pause) image is not checked",
}

func (o *Options) check(install bool) error {
	if o.Root == "" {
		return errors.New("host root is required")
	}
	if o.Services == nil {
		return errors.New("service manager is required")
	}
	if install {
		if o.Binary == "" || o.ConfigFile == "" {
			return errors.New("binary and config file are required")
		}
		if o.Probe == nil {
			return errors.New("prober is required")
		}
	}
	if o.ContainerdConfig == "" {
		o.ContainerdConfig = DefaultContainerdConfig
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Result says what Install did.
type Result struct {
	Layout   string
	Upstream string // kubelet's runtime endpoint (containerd): pullguard's upstream
	Endpoint string // kubelet's image service endpoint: pullguard's socket
	Mode     string // [nri] mode: enforce or pull-only
	Runtime  RuntimeInfo
	// DropIn is the host path of containerd's NRI drop-in (enforce mode).
	DropIn string
	// Changed is true when any host file changed.
	Changed bool
	// ContainerdChanged is true when containerd's config was edited and
	// containerd restarted by this run.
	ContainerdChanged bool
	// KubeletRewired is true when kubelet's files were edited and kubelet
	// restarted by this run.
	KubeletRewired bool
	// Warnings are what the operator must know about the node's
	// enforcement: what pull-only leaves unchecked, a break-glass
	// annotation in force.
	Warnings []string
}

// installPlan is everything Install will do, decided before anything is
// written.
type installPlan struct {
	opts      Options
	st        *hoststate.State // the state to write
	prevState *hoststate.State // as found; nil when never installed
	b         *bundle.Bundle
	socket    string // host path of pullguard's CRI socket
	admin     string // host path of pullguard's admin socket
	endpoint  string

	kub      *kubeletSetup
	kubWired bool // kubelet's image endpoint was pullguard's before this run
	kubEdits []plannedEdit

	ctd            *containerdPlan // nil in pull-only mode
	ctdWiredBefore bool

	node hoststate.Node
	res  *Result
}

// Install installs or upgrades pullguard on the host, makes containerd
// require it (unless PullOnly) and points kubelet's image service at it.
// Running it again with the same inputs changes nothing.
func Install(ctx context.Context, opts Options) (*Result, error) {
	if err := opts.check(true); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	p, err := planInstall(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("install: nothing on the host was changed: %w", err)
	}
	return p.apply(ctx)
}

// planInstall reads the node and the bundle and decides every edit.
// Nothing is written.
func planInstall(ctx context.Context, opts Options) (*installPlan, error) {
	root := opts.Root
	st, err := hoststate.LoadState(root)
	if err != nil {
		return nil, err
	}
	p := &installPlan{opts: opts, prevState: cloneState(st)}
	if st == nil {
		st = &hoststate.State{}
	}
	p.st = st
	if p.b, err = bundle.Read(bundle.Source{ConfigFile: opts.ConfigFile, PoliciesDir: opts.PoliciesDir, TruststoreDir: opts.TruststoreDir}); err != nil {
		return nil, err
	}
	cfg, err := config.Parse(p.b.Config, "config.toml")
	if err != nil {
		return nil, err
	}
	if p.socket, err = hoststate.ServerSocket(p.b.Config); err != nil {
		return nil, err
	}
	p.admin = cfg.Server.AdminSocket
	p.endpoint = hoststate.SocketEndpoint(p.socket)

	if p.kub, err = inspectKubelet(root, opts.KubeletConfig); err != nil {
		return nil, err
	}
	kub := p.kub
	if sameEndpoint(kub.runtimeEndpoint, p.endpoint) {
		return nil, fmt.Errorf("kubelet's runtime endpoint is pullguard's socket %s, as an earlier pullguard that also served the runtime left it; "+
			"run `pullguard-agent uninstall` first (it puts kubelet's configuration back from its backup), then install again", p.endpoint)
	}
	p.kubWired = sameEndpoint(kub.imageEndpoint, p.endpoint)
	if p.kubWired && !st.KubeletWired {
		return nil, fmt.Errorf("kubelet's image service endpoint is already pullguard's socket %s, but the install state (%s) has no backup of kubelet's "+
			"configuration from before, so uninstall could not put it back; point kubelet's image service back at the runtime by hand "+
			"(see daemonset/README.md) and run install again", p.endpoint, hoststate.StatePath)
	}
	if !p.kubWired && !sameEndpoint(kub.imageEndpoint, kub.runtimeEndpoint) {
		return nil, fmt.Errorf("%w: kubelet's image service endpoint (%s) is not its runtime endpoint (%s): something else already serves kubelet's image calls "+
			"in front of the runtime, and pullguard would replace it; point kubelet's image service back at the runtime (or remove the setting), then install",
			ErrUnsupportedLayout, kub.imageEndpoint, kub.runtimeEndpoint)
	}
	p.res = &Result{Layout: kub.layout, Upstream: kub.runtimeEndpoint, Endpoint: p.endpoint, Mode: config.NRIEnforce}
	p.node = hoststate.Node{Upstream: kub.runtimeEndpoint, NRIMode: config.NRIEnforce}
	p.ctdWiredBefore = st.ContainerdWired

	if opts.PullOnly {
		if st.ContainerdWired {
			return nil, fmt.Errorf("containerd requires pullguard on this node (installed without --pull-only): in pull-only mode pullguard registers no NRI plugin, " +
				"and containerd would refuse every container create; run `pullguard-agent uninstall` first, then install --pull-only")
		}
		p.res.Mode, p.node.NRIMode = config.NRIPullOnly, config.NRIPullOnly
		for _, g := range PullOnlyGaps {
			p.res.Warnings = append(p.res.Warnings, "PULL-ONLY: "+g)
		}
	} else {
		rctx, cancel := context.WithTimeout(ctx, runtimeTimeout)
		rt, err := opts.Probe.Runtime(rctx, root.Path(normEndpoint(kub.runtimeEndpoint)))
		cancel()
		if err != nil {
			return nil, fmt.Errorf("ask the runtime at kubelet's runtime endpoint %s which it is: %w", kub.runtimeEndpoint, err)
		}
		p.res.Runtime = rt
		if err := checkRuntime(rt); err != nil {
			return nil, err
		}
		spec := pluginSpec{name: cfg.NRI.PluginName, index: cfg.NRI.PluginIndex, timeout: cfg.NRI.Timeout.Duration}
		if p.ctd, err = planContainerd(root, opts.ContainerdConfig, spec); err != nil {
			return nil, err
		}
		nri := p.ctd.nri
		p.node.NRI = &nri
		p.res.DropIn = p.ctd.dropIn
		if t := p.ctd.tolerate; t != "" {
			p.res.Warnings = append(p.res.Warnings, fmt.Sprintf("containerd's break-glass annotation %q is set: pods carrying it start while pullguard is absent", t))
		}
	}
	if opts.Validate != nil {
		if err := opts.Validate(ctx, p.b, p.node); err != nil {
			return nil, fmt.Errorf("config rejected: %w", err)
		}
	}
	if !p.kubWired {
		if p.kubEdits, err = kub.planImageEndpoint(p.endpoint); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// progress is how far apply got, for undo.
type progress struct {
	prevBinary []byte
	binChanged bool
	prevConfig *hostFile
	cfgChanged bool

	ctdEdited         bool // containerd's files changed
	ctdDirs           []string
	kubEdited         bool // kubelet's files changed
	kubRestartStarted bool // kubelet's restart was attempted
}

// apply carries the plan out, undoing what it did on failure.
func (p *installPlan) apply(ctx context.Context) (*Result, error) {
	opts, root, log, res := p.opts, p.opts.Root, p.opts.Logger, p.res
	for _, w := range res.Warnings {
		log.WarnContext(ctx, w)
	}
	if res.Mode == config.NRIPullOnly {
		log.ErrorContext(ctx, "PULL-ONLY INSTALL: containerd will create containers without asking pullguard; only pulls through kubelet are decided",
			"unchecked", PullOnlyGaps)
	}
	var pr progress

	// 1. pullguard's own files.
	var err error
	if pr.prevConfig, err = readHostFile(root, hoststate.ConfigPath, bundle.MaxFileBytes); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	if pr.prevBinary, pr.binChanged, err = installBinary(root, opts.Binary); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	if pr.cfgChanged, err = p.b.WriteToHost(root, p.node); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	unitChanged, err := writeIfChanged(root.Path(hoststate.UnitPath), []byte(unitFile), 0o644)
	if err != nil {
		return nil, fmt.Errorf("install: write systemd unit: %w", err)
	}
	res.Changed = pr.binChanged || pr.cfgChanged || unitChanged
	st := p.st
	st.Layout, st.Upstream, st.Socket = p.kub.layout, res.Upstream, p.socket
	st.NRIMode, st.NRI = p.node.NRIMode, p.node.NRI
	if err := hoststate.SaveState(root, st); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	newConfig, err := p.b.NodeConfig(p.node)
	if err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	restart := pr.binChanged || unitChanged || needsRestart(pr.prevConfig, newConfig)

	// 2. containerd's NRI settings, and containerd restarted on them.
	if p.ctd != nil && len(p.ctd.edits) > 0 {
		backups, err := backupFiles(root, st.ContainerdBackups, p.ctd.edits, st.ContainerdWired)
		if err != nil {
			return nil, p.undo(ctx, pr, fmt.Errorf("back up containerd's configuration: %w", err))
		}
		st.ContainerdBackups, st.ContainerdWired = backups, true
		if err := hoststate.SaveState(root, st); err != nil {
			return nil, p.undo(ctx, pr, err)
		}
		pr.ctdEdited = true
		created, err := swapFiles(root, p.ctd.edits, p.ctd.mkdirs)
		pr.ctdDirs = created
		st.CreatedDirs = append(st.CreatedDirs, created...)
		if err == nil {
			err = hoststate.SaveState(root, st)
		}
		if err != nil {
			return nil, p.undo(ctx, pr, fmt.Errorf("write containerd's NRI settings: %w", err))
		}
		if err := opts.Services.Restart(ctx, ContainerdUnit); err != nil {
			return nil, p.undo(ctx, pr, fmt.Errorf("restart containerd: %w", err))
		}
		res.Changed, res.ContainerdChanged = true, true
		log.InfoContext(ctx, "containerd requires pullguard's NRI plugin now", "drop_in", p.ctd.dropIn, "notes", p.ctd.notes)
	}

	// 3. pullguard running, and ready: in enforce mode, its plugin
	// registered with containerd.
	if err := startPullguard(ctx, opts, unitChanged, restart); err != nil {
		return nil, p.undo(ctx, pr, fmt.Errorf("start pullguard: %w", err))
	}
	timeout := opts.ReadyTimeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	readyCtx, cancel := context.WithTimeout(ctx, timeout)
	err = opts.Probe.Ready(readyCtx, root.Path(normEndpoint(p.admin)), root.Path(normEndpoint(p.socket)))
	cancel()
	if err != nil {
		return nil, p.undo(ctx, pr, fmt.Errorf("pullguard was not ready (admin socket %s /readyz) within %s: %w", p.admin, timeout, err))
	}
	log.InfoContext(ctx, "pullguard is ready", "socket", p.socket, "upstream", res.Upstream, "mode", res.Mode)
	if p.kubWired {
		return res, nil
	}

	// 4. kubelet's image service: back up, swap the file in, restart.
	backups, err := backupFiles(root, st.Backups, p.kubEdits, false)
	if err != nil {
		return nil, p.undo(ctx, pr, fmt.Errorf("back up kubelet's configuration: %w", err))
	}
	st.Backups, st.KubeletWired = backups, true
	if err := hoststate.SaveState(root, st); err != nil {
		return nil, p.undo(ctx, pr, err)
	}
	pr.kubEdited = true
	if _, err := swapFiles(root, p.kubEdits, nil); err != nil {
		return nil, p.undo(ctx, pr, fmt.Errorf("write kubelet configuration: %w", err))
	}
	pr.kubRestartStarted = true
	if err := opts.Services.Restart(ctx, KubeletUnit); err != nil {
		return nil, p.undo(ctx, pr, fmt.Errorf("restart kubelet: %w", err))
	}
	res.Changed, res.KubeletRewired = true, true
	log.InfoContext(ctx, "kubelet's image service is pullguard now; its runtime endpoint stays on the runtime",
		"layout", p.kub.layout, "image_endpoint", p.endpoint, "runtime_endpoint", res.Upstream)
	return res, nil
}

// undo puts the node back as it was before this run, in uninstall's
// order: kubelet first (so it stops using pullguard), then containerd (so
// it does not go on refusing every create for a plugin that is not
// coming), then pullguard: the previous version put back when kubelet
// already used it, stopped otherwise. The error says what happened to
// each.
func (p *installPlan) undo(ctx context.Context, pr progress, cause error) error {
	root, svc := p.opts.Root, p.opts.Services
	var done, failed []string
	fail := func(what string, err error) { failed = append(failed, fmt.Sprintf("%s: %v", what, err)) }
	restoreFailed := false

	switch {
	case pr.kubEdited:
		if _, err := restoreEdits(root, p.kubEdits); err != nil {
			restoreFailed = true
			fail("restoring kubelet's configuration ALSO FAILED; copy the files in "+hoststate.BackupDir+" back by hand (see daemonset/README.md)", err)
		} else {
			done = append(done, "kubelet's configuration was restored byte for byte")
		}
		if pr.kubRestartStarted {
			if err := svc.Restart(ctx, KubeletUnit); err != nil {
				fail("restart kubelet with its original configuration", err)
			} else {
				done = append(done, "kubelet restarted")
			}
		}
	case !p.kubWired:
		done = append(done, "kubelet's configuration was not changed")
	}

	if pr.ctdEdited {
		if _, err := restoreEdits(root, p.ctd.edits); err != nil {
			restoreFailed = true
			fail("restoring containerd's configuration ALSO FAILED; put back the files in "+hoststate.BackupDir+" and remove "+p.ctd.dropIn+" by hand (see daemonset/README.md)", err)
		} else {
			removeDirs(root, pr.ctdDirs)
			done = append(done, "containerd's configuration was restored byte for byte")
		}
		if err := svc.Restart(ctx, ContainerdUnit); err != nil {
			fail("restart containerd with its original configuration", err)
		} else {
			done = append(done, "containerd restarted")
		}
	} else if p.ctd != nil {
		done = append(done, "containerd's configuration was not changed")
	}

	if p.kubWired {
		// kubelet's image calls go through pullguard: the previous version
		// must keep serving.
		if pr.binChanged && pr.prevBinary != nil {
			if err := hoststate.WriteFileAtomic(root.Path(hoststate.BinaryPath), pr.prevBinary, 0o755); err != nil {
				fail("restore the previous binary", err)
			}
		}
		if pr.cfgChanged && pr.prevConfig != nil {
			if _, err := restoreFile(root, hoststate.ConfigPath, pr.prevConfig.data, pr.prevConfig.mode, false); err != nil {
				fail("restore the previous config", err)
			}
		}
		if err := svc.Restart(ctx, hoststate.UnitName); err != nil {
			fail("restart the previous pullguard", err)
		} else {
			done = append(done, "the previous pullguard was put back and restarted")
		}
	} else {
		if err := svc.Stop(ctx, hoststate.UnitName); err != nil {
			fail("stop pullguard", err)
		}
		if err := svc.Disable(ctx, hoststate.UnitName); err != nil {
			fail("disable pullguard", err)
		}
		done = append(done, "pullguard stopped")
	}

	// The state goes back to what it was, so uninstall restores only what
	// is still changed; after a failed restore it keeps this run's record,
	// so uninstall (or a hand) can finish it from the backups.
	st := p.prevState
	switch {
	case restoreFailed:
		st = p.st
	case st == nil:
		st = &hoststate.State{Layout: p.st.Layout, Upstream: p.st.Upstream, Socket: p.st.Socket}
	}
	if err := hoststate.SaveState(root, st); err != nil {
		fail("save install state", err)
	}

	msg := strings.Join(done, "; ") + "; see `journalctl -u pullguard -u containerd -u kubelet` on the node, fix the cause and run install again"
	if len(failed) > 0 {
		return fmt.Errorf("install: %w; %s; BUT: %s", cause, msg, strings.Join(failed, "; "))
	}
	return fmt.Errorf("install: %w; %s", cause, msg)
}

func cloneState(st *hoststate.State) *hoststate.State {
	if st == nil {
		return nil
	}
	c := *st
	c.Backups = slices.Clone(st.Backups)
	c.ContainerdBackups = slices.Clone(st.ContainerdBackups)
	c.CreatedDirs = slices.Clone(st.CreatedDirs)
	if st.NRI != nil {
		n := *st.NRI
		c.NRI = &n
	}
	return &c
}

// needsRestart says whether a running pullguard must restart to take the
// new config: [server] and [nri] are read once at start.
func needsRestart(prev *hostFile, next []byte) bool {
	if prev == nil {
		return false // nothing running on it yet
	}
	a, errA := config.Parse(prev.data, "config.toml")
	b, errB := config.Parse(next, "config.toml")
	if errA != nil || errB != nil {
		return true
	}
	return !reflect.DeepEqual(a.Server, b.Server) || !reflect.DeepEqual(a.NRI, b.NRI)
}

func startPullguard(ctx context.Context, opts Options, reload, restart bool) error {
	if reload {
		if err := opts.Services.DaemonReload(ctx); err != nil {
			return err
		}
	}
	if err := opts.Services.Enable(ctx, hoststate.UnitName); err != nil {
		return err
	}
	if restart {
		return opts.Services.Restart(ctx, hoststate.UnitName)
	}
	return opts.Services.Start(ctx, hoststate.UnitName)
}

func installBinary(root hoststate.Root, src string) (prev []byte, changed bool, err error) {
	data, err := hoststate.ReadBounded(src, maxBinaryBytes)
	if err != nil {
		return nil, false, fmt.Errorf("read binary %s: %w", src, err)
	}
	dst := root.Path(hoststate.BinaryPath)
	prev, err = hoststate.ReadBounded(dst, maxBinaryBytes)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("read installed binary: %w", err)
	}
	if bytes.Equal(prev, data) {
		return prev, false, nil
	}
	if err := os.MkdirAll(root.Path("/usr/local/bin"), 0o755); err != nil {
		return nil, false, fmt.Errorf("create bin dir: %w", err)
	}
	if err := hoststate.WriteFileAtomic(dst, data, 0o755); err != nil {
		return nil, false, fmt.Errorf("install binary: %w", err)
	}
	return prev, true, nil
}

func writeIfChanged(path string, data []byte, mode fs.FileMode) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, err
	}
	return true, hoststate.WriteFileAtomic(path, data, mode)
}
