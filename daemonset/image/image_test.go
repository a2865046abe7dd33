package image

import (
	"archive/tar"
	"context"
	"debug/elf"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// staticBinary builds a tiny static program to stand in for pullguard (the
// real binary would make this test depend on every other package).
func staticBinary(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"pullguard-in-image\") }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "pullguard")
	cmd := exec.Command("go", "build", "-o", out, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off", "GOFLAGS=")
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build test binary: %v\n%s", err, b)
	}
	return out
}

func TestBuildPushAndReadBack(t *testing.T) {
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/pullguard:test"

	bin := staticBinary(t)
	agent := staticBinary(t)
	img, err := Build(Spec{Binary: bin, Agent: agent, Config: "../node/config.toml", PoliciesDir: "../policies", Version: "v0.0.1-test"})
	if err != nil {
		t.Fatal(err)
	}
	digest, err := Push(context.Background(), img, ref, false)
	if err != nil {
		t.Fatal(err)
	}

	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	got, err := remote.Image(r, remote.WithContext(context.Background()))
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := got.Digest(); d.String() != digest {
		t.Errorf("pulled digest %s, pushed %s", d, digest)
	}
	if mt, _ := got.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s", mt)
	}
	cf, err := got.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{AgentPath}) || cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("config: entrypoint %v os %s arch %s", cf.Config.Entrypoint, cf.OS, cf.Architecture)
	}
	if cf.Config.Labels["org.opencontainers.image.version"] != "v0.0.1-test" {
		t.Errorf("labels = %v", cf.Config.Labels)
	}
	layers, err := got.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]*tar.Header{}
	var binData []byte
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files["/"+strings.TrimSuffix(h.Name, "/")] = h
		if "/"+h.Name == BinaryPath {
			if binData, err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
	want, _ := os.ReadFile(bin)
	if string(binData) != string(want) {
		t.Fatalf("binary in the image differs from the input (%d vs %d bytes)", len(binData), len(want))
	}
	for _, p := range []string{BinaryPath, AgentPath} {
		if h := files[p]; h == nil || h.Mode&0o111 == 0 || h.Uid != 0 {
			t.Errorf("%s: header %+v", p, h)
		}
	}
	for _, p := range []string{ConfigPath, PoliciesPath + "/00-cluster-default.yaml", PoliciesPath + "/10-kube-system.yaml", PoliciesPath + "/20-pullguard-system.yaml", "/usr/local/bin", "/tmp"} {
		if files[p] == nil {
			t.Errorf("%s missing from the layer", p)
		}
	}
	// What came back out of the registry still runs.
	run := filepath.Join(t.TempDir(), "pullguard")
	if err := os.WriteFile(run, binData, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(run).Output(); err != nil || strings.TrimSpace(string(out)) != "pullguard-in-image" {
		t.Errorf("running the image's binary: %q, %v", out, err)
	}
}

func TestBuildIsReproducible(t *testing.T) {
	bin := staticBinary(t)
	a, err := Build(Spec{Binary: bin, Agent: bin, Config: "../node/config.toml"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(Spec{Binary: bin, Agent: bin, Config: "../node/config.toml"})
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Errorf("same inputs, different digests: %s %s", da, db)
	}
}

func TestBuildRefusesUnusableBinaries(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Build(Spec{Binary: script, Agent: script}); err == nil || !strings.Contains(err.Error(), "ELF") {
		t.Errorf("shell script accepted: %v", err)
	}
	if _, err := Build(Spec{Binary: staticBinary(t), Agent: script}); err == nil || !strings.Contains(err.Error(), "ELF") {
		t.Errorf("shell script accepted as the agent: %v", err)
	}
	// Debian's coreutils are dynamically linked; only assert where it is.
	if f, err := elf.Open("/bin/true"); err == nil && slices.ContainsFunc(f.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP }) {
		if _, err := Build(Spec{Binary: "/bin/true", Agent: "/bin/true"}); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
			t.Errorf("dynamic binary accepted: %v", err)
		}
	}
}
