package proxy

import (
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
