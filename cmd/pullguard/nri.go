package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullguard/pullguard/config"
	"github.com/pullguard/pullguard/plugin/enforce"
	"github.com/pullguard/pullguard/plugin/imageproxy"
	"github.com/pullguard/pullguard/plugin/nodeimages"
	"github.com/pullguard/pullguard/plugin/nri"
	"github.com/pullguard/pullguard/plugin/running"
)

// sandboxRecheck is how often the sandbox image is decided again, so a
// revoked signature or a new scan report reaches new pods.
const sandboxRecheck = 5 * time.Minute

// nriGate is the NRI side of serve: the plugin, the sandbox image's verdict
// and the map from containerd's image IDs to names. A nil *nriGate is the
// pull-only mode, and its methods do nothing.
type nriGate struct {
	plugin  *nri.Plugin
	sandbox *nri.SandboxGate
	images  *nodeimages.Index
	running *running.Tracker
	done    chan struct{}
}

// checkEnforcement refuses a config under which containers would start
// unchecked without the operator having asked for it: in enforce mode,
// containerd must have NRI on and its default validator must require
// pullguard.
func checkEnforcement(cfg *config.Config, log *slog.Logger) error {
	n := cfg.NRI
	if n.Mode == config.NRIPullOnly {
		log.Warn("PULL-ONLY MODE: creates are not decided; images already on the node, loaded or re-tagged with ctr, pulled for another namespace, image volumes and the sandbox image start unchecked")
		return nil
	}
	if n.ContainerdConfig == "" {
		log.Warn("[nri] containerd_config is empty: not checking that containerd requires pullguard")
		return nil
	}
	c, err := nri.ReadContainerdNRI(n.ContainerdConfig)
	if err != nil {
		return fmt.Errorf("check containerd's NRI settings: %w (set [nri] mode = \"pull-only\" to run without the create-time gate)", err)
	}
	if p := c.Problems(n.PluginName, n.PluginIndex); len(p) > 0 {
		return fmt.Errorf("%s; `pullguard install` configures containerd, or set [nri] mode = \"pull-only\" to accept pull-time enforcement only", strings.Join(p, "; "))
	}
	if c.SocketPath != "" && filepath.Clean(c.SocketPath) != filepath.Clean(n.Socket) {
		return fmt.Errorf("containerd's NRI socket is %s but [nri] socket is %s", c.SocketPath, n.Socket)
	}
	limit := c.RequestTimeout
	if limit == 0 {
		limit = 2 * time.Second // containerd's default plugin_request_timeout
	}
	if n.Timeout.Duration >= limit {
		return fmt.Errorf("[nri] timeout %s is not under containerd's plugin_request_timeout %s: a slow decision would get pullguard dropped", n.Timeout.Duration, limit)
	}
	if c.TolerateAnnotation != "" {
		log.Warn("containerd lets pods carrying an annotation start while pullguard is absent (break-glass)", "annotation", c.TolerateAnnotation)
	}
	return nil
}

// startNRI starts the NRI plugin in enforce mode; it returns nil in
// pull-only mode.
func startNRI(ctx context.Context, cfg *config.Config, comp *components, srv *imageproxy.Server, m *metrics, log *slog.Logger) (*nriGate, error) {
	if cfg.NRI.Mode != config.NRIEnforce {
		return nil, nil
	}
	images := nodeimages.New(nodeimages.Options{Conn: srv.Upstream(), Namespace: cfg.Server.UpstreamNamespace, Logger: log})
	srv.SetImagesChanged(images.Invalidate)
	sandbox, err := nri.NewSandboxGate(cfg.NRI.SandboxImage, comp.engine, images, log)
	if err != nil {
		return nil, err
	}
	// Only the integration tests set this: a decision slower than
	// containerd's request timeout cannot be produced otherwise.
	var slow time.Duration
	if v := os.Getenv("PULLGUARD_TEST_NRI_SLOWDOWN"); v != "" {
		if slow, err = time.ParseDuration(v); err != nil {
			return nil, fmt.Errorf("PULLGUARD_TEST_NRI_SLOWDOWN: %w", err)
		}
		log.Warn("NRI decisions are slowed down for a test", "by", slow.String())
	}
	volDir := cfg.NRI.ImageVolumeDir
	if volDir == "" {
		volDir = imageVolumeDir(ctx, srv, log)
	}
	tracker := running.New(comp.engine, images, running.Options{
		RecheckInterval:       cfg.Running.RecheckInterval.Duration,
		Concurrency:           cfg.Running.RecheckConcurrency,
		Protected:             cfg.Running.ProtectedNamespaces,
		MaxEvictionsPerMinute: cfg.Running.MaxEvictionsPerMinute,
		Observe:               m.runningContainers,
		Logger:                log,
	})
	plugin := nri.New(comp.engine, images, nri.Options{
		SocketPath:     cfg.NRI.Socket,
		Name:           cfg.NRI.PluginName,
		Index:          cfg.NRI.PluginIndex,
		Deadline:       cfg.NRI.Timeout.Duration,
		ImageVolumeDir: volDir,
		Logger:         log,
		Sandboxes:      sandbox,
		Tracker:        tracker,
		SlowDown:       slow,
	})
	g := &nriGate{plugin: plugin, sandbox: sandbox, images: images, running: tracker, done: make(chan struct{})}
	go func() {
		defer close(g.done)
		_ = plugin.Run(ctx)
	}()
	go tracker.Run(ctx)
	// Read containerd's image records now, not at the first create: a node
	// holding many images would otherwise spend part of that create's
	// deadline reading them.
	go func() {
		if err := images.Refresh(ctx); err != nil {
			log.Debug("containerd's image records not read yet; the first lookup reads them", "error", err)
		}
	}()
	go func() {
		t := time.NewTicker(sandboxRecheck)
		defer t.Stop()
		for {
			sandbox.Refresh(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return g, nil
}

// swap puts a reloaded engine in force inside containerd too.
func (g *nriGate) swap(ctx context.Context, e *enforce.Engine) {
	if g == nil {
		return
	}
	g.plugin.SetDecider(e)
	g.sandbox.SetDecider(e)
	g.sandbox.Refresh(ctx)
	g.running.SetDecider(e)
}

// wait waits for the plugin to have unregistered (its context ended).
func (g *nriGate) wait() {
	if g == nil {
		return
	}
	<-g.done
}

// imageVolumeDir asks containerd's CRI where it keeps image volumes (its
// status names its state directory). While containerd cannot tell, the
// plugin still recognises image volumes by containerd's path layout.
func imageVolumeDir(ctx context.Context, srv *imageproxy.Server, log *slog.Logger) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := runtimeapi.NewRuntimeServiceClient(srv.Upstream()).Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
	if err == nil {
		var c struct {
			StateDir string `json:"stateDir"`
		}
		if err = json.Unmarshal([]byte(st.GetInfo()["config"]), &c); err == nil && c.StateDir == "" {
			err = errors.New("no stateDir in containerd's CRI status")
		}
		if err == nil {
			return filepath.Join(c.StateDir, "image-volumes")
		}
	}
	log.Warn("containerd's image-volume directory unknown; image volumes are recognised by containerd's path layout", "error", err)
	return ""
}
