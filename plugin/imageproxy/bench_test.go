package imageproxy

import (
	"context"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// BenchmarkPassThrough compares the same image-service calls made directly
// to the in-process upstream and through the proxy; the difference per op is
// what the relay costs. Run:
// go test -run '^$' -bench PassThrough ./plugin/imageproxy/
// (integration/bench measures the same against real containerd).
func BenchmarkPassThrough(b *testing.B) {
	const images = 50
	h := newHarness(b, nil, images)
	direct := runtimeapi.NewImageServiceClient(dialTest(b, h.upstream.path))
	proxied := h.imageClient(b)
	calls := []struct {
		name string
		call func(runtimeapi.ImageServiceClient) error
	}{
		{"ImageFsInfo", func(c runtimeapi.ImageServiceClient) error {
			_, err := c.ImageFsInfo(b.Context(), &runtimeapi.ImageFsInfoRequest{})
			return err
		}},
		{"ListImages50", func(c runtimeapi.ImageServiceClient) error {
			r, err := c.ListImages(b.Context(), &runtimeapi.ListImagesRequest{})
			if err == nil && len(r.Images) != images {
				b.Fatalf("got %d images, want %d", len(r.Images), images)
			}
			return err
		}},
		{"ImageStatus", func(c runtimeapi.ImageServiceClient) error {
			_, err := c.ImageStatus(b.Context(), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "registry.example/app:v1"}})
			return err
		}},
	}
	for _, c := range calls {
		for _, target := range []struct {
			name   string
			client runtimeapi.ImageServiceClient
		}{{"direct", direct}, {"proxy", proxied}} {
			b.Run(c.name+"/"+target.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if err := c.call(target.client); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkPull is PullImage direct, through the proxy with no Gate (relayed
// as raw bytes), and through the proxy with a Gate that admits at once
// (decoded, decided, re-encoded): the last two differ by what deciding costs
// the proxy itself.
func BenchmarkPull(b *testing.B) {
	h := newHarness(b, nil, 0)
	direct := runtimeapi.NewImageServiceClient(dialTest(b, h.upstream.path))
	proxied := h.imageClient(b)
	req := pullRequest("registry.example/app:v1")
	run := func(b *testing.B, c runtimeapi.ImageServiceClient) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.PullImage(b.Context(), req); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("direct", func(b *testing.B) { run(b, direct) })
	b.Run("proxy-ungated", func(b *testing.B) { run(b, proxied) })
	b.Run("proxy-gated", func(b *testing.B) {
		h.proxy.SetGate(admitGate{})
		defer h.proxy.SetGate(nil)
		run(b, proxied)
	})
}

// admitGate is a Gate that admits everything unchanged, without recording.
type admitGate struct{}

func (admitGate) AdmitPull(context.Context, *runtimeapi.PullImageRequest) (*PullPlan, error) {
	return nil, nil
}
