// Package installer puts pullguard on a node as a host service and rewires
// kubelet to it, and undoes both. It works on the node's root filesystem
// mounted at a host root (the DaemonSet's init container mounts / at /host)
// and drives systemd through a ServiceManager.
//
// Order matters because kubelet cannot run containers while its runtime
// endpoint is dead: pullguard is installed, started and proven to answer
// CRI calls before kubelet's files are touched, and on uninstall kubelet is
// restored and restarted before pullguard stops.
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
	"time"

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

	Services ServiceManager
	Probe    Prober
	// ReadyTimeout bounds the wait for pullguard to answer; zero means 60s.
	ReadyTimeout time.Duration
	Logger       *slog.Logger
}

// maxBinaryBytes bounds the binary we copy.
const maxBinaryBytes = 512 << 20

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
			return errors.New("readiness prober is required")
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Result says what Install did.
type Result struct {
	Layout         string
	Upstream       string // runtime endpoint pullguard forwards to
	Endpoint       string // endpoint kubelet now uses
	Changed        bool   // any host file changed
	KubeletRewired bool   // kubelet's files were edited and kubelet restarted by this run
}

// Install installs or upgrades pullguard on the host and points kubelet at
// it. Running it again with the same inputs changes nothing.
func Install(ctx context.Context, opts Options) (*Result, error) {
	if err := opts.check(true); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	log, root := opts.Logger, opts.Root

	st, err := hoststate.LoadState(root)
	if err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	b, err := bundle.Read(bundle.Source{ConfigFile: opts.ConfigFile, PoliciesDir: opts.PoliciesDir, TruststoreDir: opts.TruststoreDir})
	if err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	socket, err := hoststate.ServerSocket(b.Config)
	if err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	endpoint := hoststate.SocketEndpoint(socket)

	kub, err := inspectKubelet(root, opts.KubeletConfig)
	if err != nil {
		return nil, fmt.Errorf("install: nothing on the host was changed, kubelet untouched: %w", err)
	}
	res := &Result{Layout: kub.layout, Endpoint: endpoint}
	wired := sameEndpoint(kub.runtimeEndpoint, endpoint)
	switch {
	case wired && sameEndpoint(kub.imageEndpoint, endpoint):
		if st == nil || st.Upstream == "" {
			return nil, fmt.Errorf("install: kubelet already uses %s but %s is missing, so the original runtime endpoint is unknown; "+
				"restore kubelet's configuration by hand (see daemonset/README.md) and run install again", endpoint, hoststate.StatePath)
		}
		res.Upstream = st.Upstream
	case wired || sameEndpoint(kub.imageEndpoint, endpoint):
		return nil, fmt.Errorf("install: kubelet uses pullguard for only one of runtime (%s) and image service (%s); fix kubelet's configuration by hand", kub.runtimeEndpoint, kub.imageEndpoint)
	case !sameEndpoint(kub.runtimeEndpoint, kub.imageEndpoint):
		return nil, fmt.Errorf("install: %w: kubelet uses different runtime (%s) and image (%s) endpoints; pullguard forwards to one upstream",
			ErrUnsupportedLayout, kub.runtimeEndpoint, kub.imageEndpoint)
	default:
		res.Upstream = kub.runtimeEndpoint
	}
	if opts.Validate != nil {
		if err := opts.Validate(ctx, b, hoststate.Node{Upstream: res.Upstream}); err != nil {
			return nil, fmt.Errorf("install: config rejected, nothing on the host was changed, kubelet untouched: %w", err)
		}
	}
	// Plan kubelet's edit now so an unsupported file fails before anything
	// is installed.
	var edits []plannedEdit
	if !wired {
		if edits, err = kub.planRewire(endpoint); err != nil {
			return nil, fmt.Errorf("install: nothing on the host was changed, kubelet untouched: %w", err)
		}
	}

	// 1. pullguard's own files.
	prevBinary, binChanged, err := installBinary(root, opts.Binary)
	if err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	cfgChanged, err := b.WriteToHost(root, hoststate.Node{Upstream: res.Upstream})
	if err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	unitChanged, err := writeIfChanged(root.Path(hoststate.UnitPath), []byte(unitFile), 0o644)
	if err != nil {
		return nil, fmt.Errorf("install: write systemd unit: %w", err)
	}
	res.Changed = binChanged || cfgChanged || unitChanged
	if st == nil {
		st = &hoststate.State{}
	}
	st.Layout, st.Upstream, st.Socket, st.KubeletWired = kub.layout, res.Upstream, socket, wired
	if err := hoststate.SaveState(root, st); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}

	// 2. pullguard running and answering.
	if err := startPullguard(ctx, opts, unitChanged, binChanged || unitChanged); err != nil {
		return nil, rollbackService(ctx, opts, wired, prevBinary, fmt.Errorf("start pullguard: %w", err))
	}
	timeout := opts.ReadyTimeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	readyCtx, cancel := context.WithTimeout(ctx, timeout)
	err = opts.Probe.Ready(readyCtx, root.Path(socket))
	cancel()
	if err != nil {
		return nil, rollbackService(ctx, opts, wired, prevBinary, fmt.Errorf("pullguard did not answer on %s within %s: %w", socket, timeout, err))
	}
	log.InfoContext(ctx, "pullguard is answering", "socket", socket, "upstream", res.Upstream)
	if wired {
		return res, nil
	}

	// 3. kubelet: back up, swap files in, restart; undo on any failure.
	if err := backupKubelet(root, st, edits); err != nil {
		return nil, fmt.Errorf("install: kubelet's configuration was not changed: %w", err)
	}
	st.KubeletWired = true
	if err := hoststate.SaveState(root, st); err != nil {
		return nil, fmt.Errorf("install: kubelet's configuration was not changed: %w", err)
	}
	if err := swapKubeletFiles(root, edits); err != nil {
		return nil, unwireKubelet(ctx, opts, st, edits, false, fmt.Errorf("write kubelet configuration: %w", err))
	}
	if err := opts.Services.Restart(ctx, KubeletUnit); err != nil {
		return nil, unwireKubelet(ctx, opts, st, edits, true, fmt.Errorf("restart kubelet: %w", err))
	}
	res.Changed, res.KubeletRewired = true, true
	log.InfoContext(ctx, "kubelet now uses pullguard", "layout", kub.layout, "endpoint", endpoint)
	return res, nil
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

// rollbackService undoes a failed start. When kubelet already depends on
// pullguard (an upgrade), the previous binary goes back and is restarted;
// otherwise pullguard is stopped so it does not crash-loop on a node that
// does not need it.
func rollbackService(ctx context.Context, opts Options, wired bool, prevBinary []byte, cause error) error {
	root := opts.Root
	var errs []error
	if wired && prevBinary != nil {
		if err := hoststate.WriteFileAtomic(root.Path(hoststate.BinaryPath), prevBinary, 0o755); err != nil {
			errs = append(errs, fmt.Errorf("restore previous binary: %w", err))
		} else if err := opts.Services.Restart(ctx, hoststate.UnitName); err != nil {
			errs = append(errs, fmt.Errorf("restart previous pullguard: %w", err))
		}
	}
	if !wired {
		if err := opts.Services.Stop(ctx, hoststate.UnitName); err != nil {
			errs = append(errs, err)
		}
		if err := opts.Services.Disable(ctx, hoststate.UnitName); err != nil {
			errs = append(errs, err)
		}
	}
	msg := "kubelet's configuration was not changed; see `journalctl -u pullguard` on the node, fix the config or binary and run install again"
	if len(errs) > 0 {
		return fmt.Errorf("install: %w; %s; rollback also failed: %v", cause, msg, errors.Join(errs...))
	}
	return fmt.Errorf("install: %w; %s", cause, msg)
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
