package imageproxy

import (
	"context"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// BenchmarkPassThrough compares the same unary calls made directly to the
// in-process upstream and through the proxy; the difference per op is the
// proxy's overhead. Run: go test -run '^$' -bench PassThrough ./plugin/proxy/
// (integration/bench measures the same against real containerd).
func BenchmarkPassThrough(b *testing.B) {
	h := newHarness(b, nil, 50)
	direct := runtimeapi.NewRuntimeServiceClient(dialTest(b, h.upstream.path))
	proxied := runtimeapi.NewRuntimeServiceClient(dialTest(b, h.sock))
	calls := []struct {
		name string
		call func(runtimeapi.RuntimeServiceClient) error
	}{
		{"Version", func(c runtimeapi.RuntimeServiceClient) error {
			_, err := c.Version(b.Context(), &runtimeapi.VersionRequest{})
			return err
		}},
		{"ListContainers50", func(c runtimeapi.RuntimeServiceClient) error {
			r, err := c.ListContainers(b.Context(), &runtimeapi.ListContainersRequest{})
			if err == nil && len(r.Containers) != 50 {
				b.Fatalf("got %d containers, want 50", len(r.Containers))
			}
			return err
		}},
	}
	for _, c := range calls {
		for _, target := range []struct {
			name   string
			client runtimeapi.RuntimeServiceClient
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

// BenchmarkGuardedCreate is CreateContainer direct, through the proxy with no
// Gate (pure frames), and through the proxy with a Gate that admits at once:
// the last two differ by what guarding a call costs the tunnel itself.
func BenchmarkGuardedCreate(b *testing.B) {
	h := newHarness(b, &recordingGate{}, 0)
	h.proxy.SetGate(nil)
	direct := runtimeapi.NewRuntimeServiceClient(dialTest(b, h.upstream.path))
	proxied := runtimeapi.NewRuntimeServiceClient(dialTest(b, h.sock))
	req := &runtimeapi.CreateContainerRequest{PodSandboxId: "sb", Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "c"}}}
	run := func(b *testing.B, c runtimeapi.RuntimeServiceClient) {
		for b.Loop() {
			if _, err := c.CreateContainer(b.Context(), req); err != nil {
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
func (admitGate) AdmitCreate(context.Context, *runtimeapi.CreateContainerRequest) error { return nil }
