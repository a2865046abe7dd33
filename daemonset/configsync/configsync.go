// Package configsync keeps a node's pullguard config in step with the
// DaemonSet's ConfigMaps. It polls the mounted ConfigMap volumes, validates
// every new version before it touches the host, and writes valid versions
// atomically; the daemon on the host reloads them. A bad config never
// replaces a good one.
package configsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/pullguard/pullguard/daemonset/bundle"
	"github.com/pullguard/pullguard/daemonset/hoststate"
)

// Validator checks a bundle as it would run on the host, with the node's
// settings substituted. (*bundle.Bundle).Validate is the real one.
type Validator func(ctx context.Context, b *bundle.Bundle, node hoststate.Node) error

// Options configures a Syncer.
type Options struct {
	Root        hoststate.Root
	ConfigFile  string // config.toml in the mounted ConfigMap
	PoliciesDir string // mounted policies ConfigMap; empty: none
	// TruststoreDir is the mounted trust store ConfigMap (<signer>.pem);
	// empty or missing: trust stores are not managed.
	TruststoreDir string
	Validate      Validator
	// Interval between polls; zero means 5s. A ConfigMap update reaches the
	// mount after kubelet's sync period (up to about a minute) anyway.
	Interval time.Duration
	Logger   *slog.Logger
}

// Outcome of one sync pass.
type Outcome int

const (
	Unchanged Outcome = iota // source same as the last one seen
	Applied                  // new valid version written to the host
	Rejected                 // new version invalid; host left alone
)

func (o Outcome) String() string {
	return [...]string{"unchanged", "applied", "rejected"}[o]
}

// Stats counts what the syncer did since it started.
type Stats struct {
	Applied   int64
	Rejected  int64
	Errors    int64  // source unreadable or host unwritable
	LastError string // why the last rejection or error happened
}

// Syncer copies validated config from the ConfigMap mount to the host.
type Syncer struct {
	opts Options

	mu       sync.Mutex
	lastSeen string // hash of the last version validated (good or bad)
	stats    Stats
}

// New checks opts and returns a Syncer.
func New(opts Options) (*Syncer, error) {
	if opts.Root == "" || opts.ConfigFile == "" {
		return nil, errors.New("configsync: host root and config file are required")
	}
	if opts.Validate == nil {
		return nil, errors.New("configsync: a validator is required: nothing reaches the host unchecked")
	}
	if opts.Interval <= 0 {
		opts.Interval = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Syncer{opts: opts}, nil
}

// Stats returns a copy of the counters.
func (s *Syncer) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// SyncOnce reads the source, and when it differs from the last version seen
// validates it and, if valid, writes it to the host.
func (s *Syncer) SyncOnce(ctx context.Context) (Outcome, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	log := s.opts.Logger

	st, err := hoststate.LoadState(s.opts.Root)
	if err != nil {
		return s.fail(fmt.Errorf("read install state: %w", err))
	}
	if st == nil {
		return s.fail(fmt.Errorf("pullguard is not installed on this host (no %s); run `pullguard-agent install` first", hoststate.StatePath))
	}
	b, err := bundle.Read(bundle.Source{ConfigFile: s.opts.ConfigFile, PoliciesDir: s.opts.PoliciesDir, TruststoreDir: s.opts.TruststoreDir})
	if err != nil {
		return s.fail(err)
	}
	// The node's settings are part of what gets written, so they are part
	// of the identity of a version.
	node := st.Node()
	hash := b.Hash() + "|" + nodeKey(node)
	if hash == s.lastSeen {
		return Unchanged, nil
	}
	s.lastSeen = hash
	if err := s.opts.Validate(ctx, b, node); err != nil {
		s.stats.Rejected++
		s.stats.LastError = err.Error()
		log.ErrorContext(ctx, "new pullguard config REJECTED; the node keeps its last good config",
			"source", s.opts.ConfigFile, "policies", s.opts.PoliciesDir, "error", err.Error(), "rejected_total", s.stats.Rejected)
		return Rejected, nil
	}
	changed, err := b.WriteToHost(s.opts.Root, node)
	if err != nil {
		s.lastSeen = "" // try again next pass
		return s.fail(fmt.Errorf("write config to host: %w", err))
	}
	if !changed {
		return Unchanged, nil
	}
	s.stats.Applied++
	log.InfoContext(ctx, "pullguard config applied to the node", "config", hoststate.ConfigPath,
		"policies", len(b.Policies), "applied_total", s.stats.Applied)
	return Applied, nil
}

func nodeKey(n hoststate.Node) string {
	k := n.Upstream + "|" + n.NRIMode
	if n.NRI != nil {
		k += "|" + n.NRI.Socket + "|" + n.NRI.ContainerdConfig + "|" + n.NRI.SandboxImage
	}
	return k
}

func (s *Syncer) fail(err error) (Outcome, error) {
	s.stats.Errors++
	s.stats.LastError = err.Error()
	return Unchanged, fmt.Errorf("config sync: %w", err)
}

// Run syncs at once and then every Interval until ctx ends. Failures are
// logged and retried; they never stop the loop.
func (s *Syncer) Run(ctx context.Context) error {
	tick := time.NewTicker(s.opts.Interval)
	defer tick.Stop()
	for {
		if _, err := s.SyncOnce(ctx); err != nil {
			s.opts.Logger.WarnContext(ctx, "config sync failed; will retry", "error", err.Error())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
