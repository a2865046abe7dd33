package testbed

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// File is one entry of an image layer: a regular file (Data) or a symlink (Link).
type File struct {
	Path string
	Mode int64
	Data []byte
	Link string
}

// PushedImage names an image in the bed's registry.
type PushedImage struct {
	Ref    string // HOST/repo:tag as pushed
	Digest string // manifest digest, sha256:...
	ID     string // config digest: what containerd's CRI reports as the image id
}

// Pinned is Ref's repository at the manifest digest (HOST/repo@sha256:...).
func (p PushedImage) Pinned() string {
	ref, err := name.ParseReference(p.Ref, name.Insecure)
	if err != nil {
		return p.Ref
	}
	return ref.Context().Name() + "@" + p.Digest
}

// fixedTime keeps layers reproducible: the same files give the same digest.
var fixedTime = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// BuildImage builds a single-layer linux/GOARCH OCI image from files and cfg, no Docker needed.
func BuildImage(files []File, cfg v1.Config) (v1.Image, error) {
	layerTar, err := tarFiles(files)
	if err != nil {
		return nil, fmt.Errorf("build image layer: %w", err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("build image layer: %w", err)
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("build image config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = runtime.GOARCH
	cf.Created = v1.Time{Time: fixedTime}
	cf.Config = cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("build image config: %w", err)
	}
	return img, nil
}

// tarFiles writes files (and their parent directories) as a tar stream.
func tarFiles(files []File) ([]byte, error) {
	dirs := map[string]bool{}
	for _, f := range files {
		for d := path.Dir(f.Path); d != "." && d != "/" && d != ""; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var dirList []string
	for d := range dirs {
		dirList = append(dirList, d)
	}
	sort.Strings(dirList)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range dirList {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: fixedTime}); err != nil {
			return nil, err
		}
	}
	for _, f := range files {
		h := &tar.Header{Name: f.Path, Mode: f.Mode, ModTime: fixedTime}
		switch {
		case f.Link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, f.Link, 0o777
		case f.Data == nil && f.Mode&0o40000 != 0:
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, f.Path+"/", f.Mode&0o7777
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Push writes img to the registry as HOST/repoTag (e.g. "team-a/app:v1").
func (r *Registry) Push(ctx context.Context, repoTag string, img v1.Image) (PushedImage, error) {
	full := r.Host + "/" + repoTag
	ref, err := name.ParseReference(full, name.Insecure)
	if err != nil {
		return PushedImage{}, fmt.Errorf("push %s: %w", full, err)
	}
	opts := []remote.Option{remote.WithContext(ctx)}
	if r.Auth != nil {
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: r.Auth.Username, Password: r.Auth.Password}))
	}
	if err := remote.Write(ref, img, opts...); err != nil {
		return PushedImage{}, fmt.Errorf("push %s: %w", full, err)
	}
	dig, err := img.Digest()
	if err != nil {
		return PushedImage{}, fmt.Errorf("push %s: digest: %w", full, err)
	}
	cfg, err := img.ConfigName()
	if err != nil {
		return PushedImage{}, fmt.Errorf("push %s: config digest: %w", full, err)
	}
	return PushedImage{Ref: full, Digest: dig.String(), ID: cfg.String()}, nil
}

// busyboxApplets are linked in the runnable image: enough for sh -c scripts, exec and logs.
var busyboxApplets = []string{"sh", "echo", "sleep", "cat", "ls", "true", "false", "env", "id", "hostname", "ps", "wc", "head", "tail", "grep", "date", "touch", "kill"}

// RunnableImage is a busybox-static image: /bin/sh and common applets, no entrypoint, Cmd
// ["sh"]; marker is written to /etc/marker so distinct tags can get distinct digests.
func RunnableImage(busyboxPath, marker string) (v1.Image, error) {
	bb, err := os.ReadFile(busyboxPath)
	if err != nil {
		return nil, fmt.Errorf("runnable image: read busybox: %w", err)
	}
	files := []File{{Path: "bin/busybox", Mode: 0o755, Data: bb}}
	for _, a := range busyboxApplets {
		files = append(files, File{Path: "bin/" + a, Link: "busybox"})
	}
	files = append(files,
		File{Path: "etc/marker", Mode: 0o644, Data: []byte(marker + "\n")},
		File{Path: "etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\n")},
		File{Path: "tmp", Mode: 0o41777},
		File{Path: "proc", Mode: 0o40755}, File{Path: "sys", Mode: 0o40755}, File{Path: "dev", Mode: 0o40755},
	)
	return BuildImage(files, v1.Config{
		Cmd: []string{"sh"},
		Env: []string{"PATH=/bin"},
	})
}

// TinyImage is a non-runnable one-file image whose digest depends on content: cheap and
// distinct, for pull tests.
func TinyImage(content string) (v1.Image, error) {
	return BuildImage([]File{{Path: "content.txt", Mode: 0o644, Data: []byte(content)}}, v1.Config{Cmd: []string{"/nonexistent"}})
}

// PauseImage packages a static pause binary as the sandbox image.
func PauseImage(pauseBinary string) (v1.Image, error) {
	b, err := os.ReadFile(pauseBinary)
	if err != nil {
		return nil, fmt.Errorf("pause image: %w", err)
	}
	return BuildImage([]File{{Path: "pause", Mode: 0o755, Data: b}}, v1.Config{Entrypoint: []string{"/pause"}})
}
