// Package image builds pullguard's container image without a container
// engine: one layer holding the two static binaries, the default node config
// and the default policies, written as an OCI image and pushed with
// go-containerregistry. The DaemonSet runs this image's pullguard-agent; the
// pullguard binary in it is the node daemon that `pullguard-agent install`
// copies to the node.
package image

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/pullguard/pullguard/daemonset/hoststate"
)

// Paths inside the image.
const (
	BinaryPath   = "/usr/local/bin/pullguard"
	AgentPath    = "/usr/local/bin/pullguard-agent"
	ConfigPath   = "/etc/pullguard/config.toml"
	PoliciesPath = "/etc/pullguard/policies"
)

// Bounds on the inputs.
const (
	maxBinaryBytes = 512 << 20
	maxFileBytes   = 1 << 20
	maxPolicies    = 256
)

// Spec says what goes into the image.
type Spec struct {
	Binary      string // the statically linked node daemon, pullguard (CGO_ENABLED=0)
	Agent       string // the statically linked pullguard-agent, the image's entrypoint
	Config      string // default config.toml; empty: none
	PoliciesDir string // default policy files (*.yaml, *.yml, *.toml); empty: none
	Version     string // recorded as org.opencontainers.image.version
	// Created is the image's creation time; zero keeps builds reproducible
	// (the Unix epoch, as ko and Bazel do).
	Created time.Time
}

// Build assembles the image. The platform comes from the binary itself.
func Build(spec Spec) (v1.Image, error) {
	if spec.Created.IsZero() {
		spec.Created = time.Unix(0, 0).UTC()
	}
	bin, err := hoststate.ReadBounded(spec.Binary, maxBinaryBytes)
	if err != nil {
		return nil, fmt.Errorf("build image: read binary: %w", err)
	}
	arch, err := staticLinuxArch(bin)
	if err != nil {
		return nil, fmt.Errorf("build image: %s: %w", spec.Binary, err)
	}
	agent, err := hoststate.ReadBounded(spec.Agent, maxBinaryBytes)
	if err != nil {
		return nil, fmt.Errorf("build image: read agent binary: %w", err)
	}
	if agentArch, err := staticLinuxArch(agent); err != nil {
		return nil, fmt.Errorf("build image: %s: %w", spec.Agent, err)
	} else if agentArch != arch {
		return nil, fmt.Errorf("build image: %s is for %s, %s for %s", spec.Agent, agentArch, spec.Binary, arch)
	}
	files := []file{{path: BinaryPath, data: bin, mode: 0o755}, {path: AgentPath, data: agent, mode: 0o755}}
	if spec.Config != "" {
		data, err := hoststate.ReadBounded(spec.Config, maxFileBytes)
		if err != nil {
			return nil, fmt.Errorf("build image: read config: %w", err)
		}
		files = append(files, file{path: ConfigPath, data: data, mode: 0o644})
	}
	if spec.PoliciesDir != "" {
		pols, err := policyFiles(spec.PoliciesDir)
		if err != nil {
			return nil, fmt.Errorf("build image: %w", err)
		}
		files = append(files, pols...)
	}
	layerTar, err := tarLayer(files, spec.Created)
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("build image: layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{CreatedBy: "pullguard image", Created: v1.Time{Time: spec.Created}},
	})
	if err != nil {
		return nil, fmt.Errorf("build image: append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("build image: config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: spec.Created}
	cf.Config.Entrypoint = []string{AgentPath}
	cf.Config.Cmd = []string{"--help"}
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.Config.WorkingDir = "/"
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":  "pullguard",
		"org.opencontainers.image.source": "https://github.com/pullguard/pullguard",
	}
	if spec.Version != "" {
		cf.Config.Labels["org.opencontainers.image.version"] = spec.Version
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("build image: set config: %w", err)
	}
	return img, nil
}

// Push writes img to ref (e.g. 127.0.0.1:5000/pullguard:v1) and returns the
// pushed digest. Credentials come from the usual docker config; loopback and
// localhost registries are spoken to over plain HTTP (go-containerregistry's
// rule), anything else needs insecure to do so.
func Push(ctx context.Context, img v1.Image, ref string, insecure bool) (string, error) {
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return "", fmt.Errorf("push: parse %q: %w", ref, err)
	}
	if err := remote.Write(r, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return "", fmt.Errorf("push %s: %w", r, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", fmt.Errorf("push %s: digest: %w", r, err)
	}
	return d.String(), nil
}

type file struct {
	path string
	data []byte
	mode int64
}

// tarLayer writes files and their parent directories, root-owned, with a
// fixed mtime so the same inputs give the same digest.
func tarLayer(files []file, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	var dirList []string
	for _, f := range files {
		for d := path.Dir(f.path); d != "/"; d = path.Dir(d) {
			if !dirs[d] {
				dirs[d] = true
				dirList = append(dirList, d)
			}
		}
	}
	// /tmp for tools that expect it; the DaemonSet mounts its own.
	dirList = append(dirList, "/tmp")
	slices.Sort(dirList)
	for _, d := range dirList {
		mode := int64(0o755)
		if d == "/tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: mode, ModTime: mtime, Format: tar.FormatPAX}); err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
	}
	for _, f := range files {
		h := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(f.path, "/"), Mode: f.mode, Size: int64(len(f.data)), ModTime: mtime, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}

func policyFiles(dir string) ([]file, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read policies: %w", err)
	}
	var out []file
	for _, e := range entries {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if strings.HasPrefix(e.Name(), ".") || (ext != ".yaml" && ext != ".yml" && ext != ".toml") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
			continue
		}
		if len(out) == maxPolicies {
			return nil, fmt.Errorf("read policies: more than %d files in %s", maxPolicies, dir)
		}
		data, err := hoststate.ReadBounded(p, maxFileBytes)
		if err != nil {
			return nil, fmt.Errorf("read policy: %w", err)
		}
		out = append(out, file{path: PoliciesPath + "/" + e.Name(), data: data, mode: 0o644})
	}
	return out, nil
}

// staticLinuxArch refuses binaries that could not run in an image with no
// libc, and names the architecture for the image's platform.
func staticLinuxArch(bin []byte) (string, error) {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return "", fmt.Errorf("not a Linux ELF binary: %w", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", errors.New("dynamically linked (has an ELF interpreter); build it with CGO_ENABLED=0")
		}
	}
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	case elf.EM_386:
		return "386", nil
	case elf.EM_ARM:
		return "arm", nil
	case elf.EM_PPC64:
		return "ppc64le", nil
	case elf.EM_S390:
		return "s390x", nil
	case elf.EM_RISCV:
		return "riscv64", nil
	}
	return "", fmt.Errorf("unsupported ELF machine %v", f.Machine)
}
