package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/pullguard/pullguard/config"
	"github.com/pullguard/pullguard/plugin/cache"
	"github.com/pullguard/pullguard/plugin/enforce"
	"github.com/pullguard/pullguard/plugin/policy"
	"github.com/pullguard/pullguard/plugin/registry"
	"github.com/pullguard/pullguard/plugin/trust"
	"github.com/pullguard/pullguard/plugin/va"
)

// components are what one config builds. A reload builds a whole new set
// and swaps it in only when every part built; the facts cache outlives
// reloads because its keys carry the trust material they were checked with.
type components struct {
	engine *enforce.Engine
}

// shared is what survives reloads.
type shared struct {
	log   *slog.Logger
	obs   enforce.Observer
	facts *cache.Cache[*enforce.Facts]
	// background verifies what decisions inside containerd found missing.
	background *enforce.Background
}

func newFactsCache(cfg *config.Config) *cache.Cache[*enforce.Facts] {
	negative := cfg.Cache.NegativeTTL.Duration
	return cache.New[*enforce.Facts](cache.Options{Size: cfg.Cache.Size, TTL: cfg.Cache.TTL.Duration,
		TTLFor: func(v any) time.Duration {
			if f, ok := v.(*enforce.Facts); ok && f.Negative() {
				return negative
			}
			return 0
		}})
}

// assemble builds the decision engine from a validated config.
func assemble(_ context.Context, cfg *config.Config, sh shared) (*components, error) {
	if sh.log == nil {
		sh.log = slog.New(slog.DiscardHandler)
	}
	set, err := buildPolicySet(cfg)
	if err != nil {
		return nil, err
	}
	reg, err := registry.New(registry.Options{
		HostsDir:           cfg.Registry.HostsDir,
		PlainHTTP:          cfg.Registry.PlainHTTP,
		InsecureSkipVerify: cfg.Registry.InsecureSkipVerify,
		CAFiles:            cfg.Registry.CAFiles,
		Timeout:            cfg.Registry.Timeout.Duration,
		MaxManifestBytes:   cfg.Registry.MaxManifestBytes,
		MaxBlobBytes:       cfg.Registry.MaxBlobBytes,
		MaxReferrers:       cfg.Registry.MaxReferrers,
		Logger:             sh.log,
	})
	if err != nil {
		return nil, fmt.Errorf("registry settings: %w", err)
	}
	allow, err := cfg.VA.Exemptions()
	if err != nil {
		return nil, fmt.Errorf("[va] settings: %w", err)
	}
	opts := enforce.Options{
		Logger:   sh.log,
		Timeout:  cfg.Decision.Timeout.Duration,
		Observer: sh.obs,
		Registry: reg,
		VADefaults: enforce.VADefaults{
			MaxSeverity:         cfg.VA.MaxSeverity,
			IgnoreUnfixed:       cfg.VA.IgnoreUnfixed,
			Unscanned:           cfg.VA.Unscanned,
			MaxReportAge:        cfg.VA.MaxReportAge.Duration,
			RequireSignedReport: cfg.VA.RequireSignedReport,
			UnknownSeverity:     cfg.VA.UnknownSeverity,
			Allow:               allow,
		},
	}
	if sh.facts != nil {
		opts.Facts = sh.facts
	}
	opts.Background = sh.background
	if f := cfg.Registry.AuthFile; f != "" {
		if opts.NodeCredentials, err = registry.LoadDockerConfig(f); err != nil {
			return nil, fmt.Errorf("[registry] auth_file: %w", err)
		}
	}

	imageSigners, err := loadSigners(cfg, func(name string) bool { return !slices.Contains(cfg.VA.ScannerSigners, name) })
	if err != nil {
		return nil, err
	}
	if len(imageSigners) > 0 {
		v, err := trust.NewVerifier(trust.Options{Signers: imageSigners, Registry: reg, MaxSignatures: cfg.Registry.MaxSignatures, Logger: sh.log})
		if err != nil {
			return nil, fmt.Errorf("signature verifier: %w", err)
		}
		opts.Trust = v
	}

	reportOpts := va.ReferrersOptions{MaxReportBytes: cfg.VA.MaxReportBytes, Log: sh.log}
	scannerSigners, err := loadSigners(cfg, func(name string) bool { return slices.Contains(cfg.VA.ScannerSigners, name) })
	if err != nil {
		return nil, err
	}
	if len(scannerSigners) > 0 {
		sv, err := trust.NewVerifier(trust.Options{Signers: scannerSigners, Registry: reg, MaxSignatures: cfg.Registry.MaxSignatures, Logger: sh.log})
		if err != nil {
			return nil, fmt.Errorf("scan report verifier: %w", err)
		}
		reportOpts.Verifier = enforce.ReportVerifier{Verifier: sv}
		opts.VADefaults.ScannerMaterialHash = sv.TrustMaterialHash()
	}
	// Without scanner signers a report that must be signed cannot be: the
	// source then denies rather than skips the check.
	opts.Reports = va.NewReferrersSource(reportOpts)
	return &components{engine: enforce.New(set, opts)}, nil
}

// loadSigners reads the trust stores of the configured signers keep selects.
// Scanner signers vouch for scan reports only: a compromised scanner key
// must not be able to vouch for images too.
func loadSigners(cfg *config.Config, keep func(name string) bool) ([]*trust.LoadedSigner, error) {
	var sel []trust.Signer
	for _, s := range cfg.Signers {
		if !keep(s.Name) {
			continue
		}
		sel = append(sel, trust.Signer{
			Name:              s.Name,
			TrustStoreDir:     s.TrustStore,
			Identities:        s.Identities,
			TimestampStoreDir: s.TimestampStore,
			Revocation:        s.Revocation,
		})
	}
	loaded, err := trust.LoadSigners(sel)
	if err != nil {
		return nil, fmt.Errorf("signers: %w", err)
	}
	return loaded, nil
}

func buildPolicySet(cfg *config.Config) (*policy.Set, error) {
	pols, err := cfg.Policies()
	if err != nil {
		return nil, fmt.Errorf("load policies: %w", err)
	}
	set, err := policy.NewSet(pols, policy.Mode(cfg.Policy.DefaultMode))
	if err != nil {
		return nil, fmt.Errorf("build policy set: %w", err)
	}
	return set, nil
}
