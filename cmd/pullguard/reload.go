package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/pullguard/pullguard/config"
)

// reloader swaps in a new config when its files change or on SIGHUP. A
// config that does not load, validate and build is rejected and the last
// good one stays in force: a typo must never unprotect a node.
type reloader struct {
	path string
	// build makes the components of a new config; swap puts them in force.
	build       func(cfg *config.Config) (*components, error)
	swap        func(*components)
	log         *slog.Logger
	metrics     *metrics
	running     *config.Config
	fingerprint string
	// rejected remembers the fingerprint of the last rejected attempt so a
	// bad file is reported once, not every poll.
	rejected string
}

func (r *reloader) reload(_ context.Context, forced bool) {
	fp, err := fingerprint(r.running, r.path)
	if err != nil {
		fp = "error:" + err.Error()
	}
	if !forced && (fp == r.fingerprint || fp == r.rejected) {
		return
	}
	cfg, err := config.Load(r.path)
	if err == nil {
		var comp *components
		if comp, err = r.build(cfg); err == nil {
			r.warnImmutable(cfg)
			for _, w := range cfg.Warnings() {
				r.log.Warn("config warning", "config", r.path, "warning", w)
			}
			r.swap(comp)
			// The new config may name another policy directory.
			if nfp, ferr := fingerprint(cfg, r.path); ferr == nil {
				fp = nfp
			}
			r.running, r.fingerprint, r.rejected = cfg, fp, ""
			r.metrics.reloaded(true)
			r.log.Info("config reloaded", "config", r.path, "policy_hash", comp.engine.Policies().Hash())
			return
		}
	}
	r.rejected = fp
	r.metrics.reloaded(false)
	r.log.Error("config reload rejected; the last good config stays in force",
		"config", r.path, "error", err)
}

// warnImmutable says which changes need a restart: the socket and upstream
// are bound once, and silently ignoring an edit would mislead.
func (r *reloader) warnImmutable(next *config.Config) {
	old := r.running.Server
	if old.Socket != next.Server.Socket || old.Upstream != next.Server.Upstream ||
		old.MaxMessageBytes != next.Server.MaxMessageBytes {
		r.log.Warn("server settings changed; they take effect after a restart",
			"socket", next.Server.Socket, "upstream", next.Server.Upstream)
	}
}

// fingerprint hashes the config file and every file in the policy directory
// it names, so polling notices any edit, including a ConfigMap's symlink swap.
func fingerprint(cfg *config.Config, path string) (string, error) {
	h := sha256.New()
	if err := hashFile(h, path); err != nil {
		return "", err
	}
	if cfg != nil {
		// Policies and trust stores (ConfigMap/Secret mounts swap a symlink)
		// are part of what a reload must notice.
		dirs := []string{cfg.Policy.Dir, cfg.Policy.SyncedDir}
		for _, sg := range cfg.Signers {
			dirs = append(dirs, sg.TrustStore, sg.TimestampStore)
		}
		for _, dir := range dirs {
			if err := hashDir(h, dir); err != nil {
				return "", err
			}
		}
		if f := cfg.Registry.AuthFile; f != "" {
			if err := hashFile(h, f); err != nil && !os.IsNotExist(err) {
				return "", err
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// hashDir hashes the names and contents of a directory's visible files.
func hashDir(h io.Writer, dir string) error {
	if dir == "" {
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	fmt.Fprintf(h, "\x00dir %s\x00", dir)
	for _, n := range names {
		fmt.Fprintf(h, "\x00%s\x00", n)
		if err := hashFile(h, filepath.Join(dir, n)); err != nil {
			return err
		}
	}
	return nil
}

func hashFile(h io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.IsDir() {
		return nil
	}
	_, err = io.Copy(h, f)
	return err
}
