package nri

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"
)

const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// TestImageVolumeDigest: bind mounts from containerd's image-volume directory are image volumes,
// decided by the digest their path names; one that looks like an image volume but does not name
// a digest is refused, never ignored; other mounts are not image volumes.
func TestImageVolumeDigest(t *testing.T) {
	p := &Plugin{opts: Options{ImageVolumeDir: "/run/containerd/io.containerd.grpc.v1.cri/image-volumes"}}
	for _, tc := range []struct {
		src      string
		volume   bool
		digest   string
		errorHas string
	}{
		{src: "/run/containerd/io.containerd.grpc.v1.cri/image-volumes/sb1/" + hex64, volume: true, digest: "sha256:" + hex64},
		{src: "/run/containerd/io.containerd.grpc.v1.cri/image-volumes/sb1/" + hex64 + "/sub/path", volume: true, digest: "sha256:" + hex64},
		{src: "/run/containerd/io.containerd.grpc.v1.cri/image-volumes/sb1/../sb2/" + hex64, volume: true, digest: "sha256:" + hex64},
		// Another containerd state directory than the one configured: still an image volume.
		{src: "/var/lib/other/io.containerd.grpc.v1.cri/image-volumes/sb/" + hex64, volume: true, digest: "sha256:" + hex64},
		{src: "/run/containerd/io.containerd.grpc.v1.cri/image-volumes/sb1", volume: true, errorHas: "no sandbox and digest"},
		{src: "/run/containerd/io.containerd.grpc.v1.cri/image-volumes/sb1/" + strings.ToUpper(hex64), volume: true, errorHas: "sha256"},
		{src: "/run/containerd/io.containerd.grpc.v1.cri/image-volumes/sb1/" + hex64[:63], volume: true, errorHas: "sha256"},
		{src: "/run/containerd/io.containerd.grpc.v1.cri/image-volumes//" + hex64, volume: true, errorHas: "no sandbox and digest"},
		{src: "/var/lib/kubelet/pods/x/volumes/kubernetes.io~empty-dir/data", volume: false},
		{src: "/run/containerd/io.containerd.grpc.v1.cri/image-volumesX/sb/" + hex64, volume: false},
		{src: "", volume: false},
	} {
		d, volume, err := p.imageVolumeDigest(&api.Mount{Source: tc.src, Destination: "/vol"})
		if volume != tc.volume || d != tc.digest || (tc.errorHas == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.errorHas)) {
			t.Errorf("%q: digest %q volume %v err %v; want %q %v %q", tc.src, d, volume, err, tc.digest, tc.volume, tc.errorHas)
		}
	}
}

// FuzzImageVolumeDigest: whatever a mount's source, an image-volume mount either names a valid
// sha256 digest or is an error; nothing under the image-volume directory is ever let through as
// "not an image volume".
func FuzzImageVolumeDigest(f *testing.F) {
	const dir = "/run/containerd/io.containerd.grpc.v1.cri/image-volumes"
	f.Add(dir + "/sb/" + hex64)
	f.Add(dir + "/sb/" + hex64 + "/x")
	f.Add("/etc/passwd")
	f.Add(dir + "/../../x")
	p := &Plugin{opts: Options{ImageVolumeDir: dir}}
	f.Fuzz(func(t *testing.T, src string) {
		d, volume, err := p.imageVolumeDigest(&api.Mount{Source: src})
		if !volume && (d != "" || err != nil) {
			t.Fatalf("%q: not a volume but digest %q err %v", src, d, err)
		}
		if volume && err == nil && (len(d) != len("sha256:")+64 || strings.Trim(strings.TrimPrefix(d, "sha256:"), "0123456789abcdef") != "") {
			t.Fatalf("%q: accepted digest %q", src, d)
		}
		// The path the kernel mounts is the cleaned one ("a/../b" is b).
		if strings.Contains(filepath.Clean(src), "/io.containerd.grpc.v1.cri/image-volumes/") && !volume {
			t.Fatalf("%q: an image-volume path taken for an ordinary mount", src)
		}
	})
}
