package proxy

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullguard/pullguard/plugin/enforce"
)

// stubImages stands in for containerd's CRI ImageStatus, for these unit tests
// only: they must count its calls and stop one midway to interleave it with
// ImagesChanged, which a real containerd gives no hook for.
type stubImages struct {
	image *runtimeapi.Image // nil: not on the node
	err   error
	// entered, when set, receives once per call, which then waits for release.
	entered chan struct{}
	release chan struct{}

	mu    sync.Mutex
	calls int
}

func (s *stubImages) ImageStatus(ctx context.Context, _ *runtimeapi.ImageStatusRequest, _ ...grpc.CallOption) (*runtimeapi.ImageStatusResponse, error) {
	s.mu.Lock()
	s.calls++
	s.mu.Unlock()
	if s.entered != nil {
		s.entered <- struct{}{}
		select {
		case <-s.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if s.err != nil {
		return nil, s.err
	}
	return &runtimeapi.ImageStatusResponse{Image: s.image}, nil
}

func (s *stubImages) callCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// recordingDecider admits everything and keeps the requests, so a test can
// check that a cached lookup leads to the same decision input.
type recordingDecider struct {
	mu   sync.Mutex
	reqs []enforce.Request
}

func (d *recordingDecider) Decide(_ context.Context, req enforce.Request) *enforce.Decision {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reqs = append(d.reqs, req)
	return &enforce.Decision{Verdict: enforce.Admit}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var (
	cacheTestID     = "sha256:" + strings.Repeat("c", 64)
	cacheTestDigest = "sha256:" + strings.Repeat("d", 64)
	cacheTestImage  = &runtimeapi.Image{
		Id:          cacheTestID,
		RepoTags:    []string{"registry.example/app:v1"},
		RepoDigests: []string{"registry.example/app@" + cacheTestDigest},
	}
)

// createByID is what kubelet sends: the image ID, and the pod's string.
func createByID(id string) *runtimeapi.CreateContainerRequest {
	return &runtimeapi.CreateContainerRequest{
		Config: &runtimeapi.ContainerConfig{Image: &runtimeapi.ImageSpec{Image: id, UserSpecifiedImage: "registry.example/app:v1"}},
		SandboxConfig: &runtimeapi.PodSandboxConfig{
			Metadata: &runtimeapi.PodSandboxMetadata{Namespace: "team"},
		},
	}
}

func newCachingEnforcer(images ImageStatuser) (*Enforcer, *recordingDecider, *fakeClock) {
	d := &recordingDecider{}
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	e := NewEnforcer(d, images)
	e.lookups.now = clk.Now
	return e, d, clk
}

func TestImageCacheEnforcer(t *testing.T) {
	upstreamErr := status.Error(codes.Unavailable, "containerd is restarting")
	tests := []struct {
		name    string
		image   *runtimeapi.Image
		err     error
		between func(e *Enforcer, clk *fakeClock) // run between the two creates
		// wantCalls is how many ImageStatus calls the two creates make.
		wantCalls int
		wantCode  codes.Code
		byName    bool // create by a name instead of the image ID
	}{
		{"hit avoids the call", cacheTestImage, nil, func(*Enforcer, *fakeClock) {}, 1, codes.OK, false},
		// A tag can be re-pointed on the node behind pullguard's back.
		{"a name is looked up every time", cacheTestImage, nil, func(*Enforcer, *fakeClock) {}, 2, codes.OK, true},
		{"still fresh just before the TTL", cacheTestImage, nil,
			func(_ *Enforcer, clk *fakeClock) { clk.advance(imageCacheTTL - time.Nanosecond) }, 1, codes.OK, false},
		{"expired at the TTL", cacheTestImage, nil,
			func(_ *Enforcer, clk *fakeClock) { clk.advance(imageCacheTTL) }, 2, codes.OK, false},
		{"ImagesChanged drops it", cacheTestImage, nil,
			func(e *Enforcer, _ *fakeClock) { e.ImagesChanged() }, 2, codes.OK, false},
		{"not on the node is asked again", nil, nil, func(*Enforcer, *fakeClock) {}, 2, codes.OK, false},
		{"an error is not replayed", nil, upstreamErr, func(*Enforcer, *fakeClock) {}, 2, codes.Unavailable, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			images := &stubImages{image: tc.image, err: tc.err}
			e, d, clk := newCachingEnforcer(images)
			for i := range 2 {
				req := createByID(cacheTestID)
				if tc.byName {
					req.Config.Image.Image = "registry.example/app:v1"
				}
				err := e.AdmitCreate(t.Context(), req)
				if got := status.Code(err); got != tc.wantCode {
					t.Fatalf("create %d: code %v (%v), want %v", i+1, got, err, tc.wantCode)
				}
				if i == 0 {
					tc.between(e, clk)
				}
			}
			if got := images.callCount(); got != tc.wantCalls {
				t.Errorf("ImageStatus called %d times, want %d", got, tc.wantCalls)
			}
			if tc.image != nil {
				// Whether cached or not, both creates are decided on the same facts.
				if len(d.reqs) != 2 || !reflect.DeepEqual(d.reqs[0], d.reqs[1]) {
					t.Errorf("decision requests differ: %+v", d.reqs)
				}
				if len(d.reqs) > 0 && d.reqs[0].Digest != cacheTestDigest {
					t.Errorf("decided digest %q, want the node's repo digest %q", d.reqs[0].Digest, cacheTestDigest)
				}
			} else if len(d.reqs) != 0 {
				t.Errorf("decided %d times on an image not found or not looked up", len(d.reqs))
			}
		})
	}
}

// A lookup that was already at containerd when a pull or removal passed may
// carry the old names: it must not be stored. The control case shows the same
// interleaving does store without ImagesChanged.
func TestImageCacheLookupRacingImagesChanged(t *testing.T) {
	for _, changed := range []bool{true, false} {
		t.Run(fmt.Sprintf("ImagesChanged=%v", changed), func(t *testing.T) {
			images := &stubImages{image: cacheTestImage, entered: make(chan struct{}), release: make(chan struct{})}
			e, _, _ := newCachingEnforcer(images)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()

			done := make(chan error, 1)
			go func() { done <- e.AdmitCreate(ctx, createByID(cacheTestID)) }()
			select {
			case <-images.entered:
			case <-ctx.Done():
				t.Fatal("the create never reached ImageStatus")
			}
			if changed {
				e.ImagesChanged()
			}
			close(images.release)
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("AdmitCreate: %v", err)
				}
			case <-ctx.Done():
				t.Fatal("the create did not finish")
			}

			want := 1
			if changed {
				want = 0
			}
			if got := e.lookups.len(); got != want {
				t.Errorf("cache holds %d entries, want %d", got, want)
			}
		})
	}
}

func TestImageCacheBound(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	const ttl = 10 * time.Second
	c := newImageCache(clk.Now, ttl, 3)
	img := func(ref string) *runtimeapi.Image { return &runtimeapi.Image{Id: ref} }
	put := func(ref string) {
		_, gen, _ := c.get(ref)
		c.put(ref, img(ref), gen)
	}

	put("a")
	clk.advance(ttl / 2)
	put("b")
	put("c")
	put("b") // refreshing an entry does not take a second slot
	clk.advance(ttl / 2)
	put("d") // full: "a" has expired and goes
	put("e") // full, nothing expired: the oldest, "c", goes ("b" was refreshed after it)

	if got := c.len(); got != 3 {
		t.Errorf("len = %d, want the bound 3", got)
	}
	for ref, want := range map[string]bool{"a": false, "b": true, "c": false, "d": true, "e": true} {
		got, _, ok := c.get(ref)
		if ok != want {
			t.Errorf("get(%s) present = %v, want %v", ref, ok, want)
		}
		if ok && got.GetId() != ref {
			t.Errorf("get(%s) = image %s", ref, got.GetId())
		}
	}
}

func TestImageCacheDoesNotStoreNil(t *testing.T) {
	c := newImageCache(time.Now, imageCacheTTL, imageCacheMax)
	_, gen, _ := c.get("x")
	c.put("x", nil, gen)
	if _, _, ok := c.get("x"); ok || c.len() != 0 {
		t.Errorf("a not-found result was cached (len %d)", c.len())
	}
}

// Creates, pulls' invalidations and expiries at once, for the race detector;
// every create must still be admitted on the stub's image.
func TestImageCacheConcurrentEnforcer(t *testing.T) {
	images := &stubImages{image: cacheTestImage}
	e, d, clk := newCachingEnforcer(images)
	var wg sync.WaitGroup
	errs := make(chan error, 8*50)
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				id := "sha256:" + strings.Repeat(fmt.Sprint(i%4), 64)
				if err := e.AdmitCreate(t.Context(), createByID(id)); err != nil {
					errs <- err
				}
				switch {
				case g == 0 && i%10 == 0:
					e.ImagesChanged()
				case g == 1 && i%10 == 0:
					clk.advance(imageCacheTTL)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("AdmitCreate: %v", err)
	}
	if got, want := len(d.reqs), 8*50; got != want {
		t.Errorf("%d decisions, want %d", got, want)
	}
	if n := e.lookups.len(); n > 4 {
		t.Errorf("cache holds %d entries for 4 refs", n)
	}
	// Each goroutine misses a ref at most once between two invalidations or
	// expiries (its own lookup stores unless one intervenes): 11 such periods
	// x 4 refs x 8 goroutines = 352 calls at most, fewer than the 400 creates.
	if got := images.callCount(); got > 11*4*8 {
		t.Errorf("ImageStatus called %d times for 400 creates, want at most %d", got, 11*4*8)
	}
}

type admitAll struct{}

func (admitAll) Decide(context.Context, enforce.Request) *enforce.Decision {
	return &enforce.Decision{Verdict: enforce.Admit}
}

// The Enforcer's own share of a create whose image lookup is cached: name
// extraction and the cache, without the engine (admitAll) or containerd.
func BenchmarkEnforcerCreateCached(b *testing.B) {
	images := &stubImages{image: cacheTestImage}
	e := NewEnforcer(admitAll{}, images)
	req := createByID(cacheTestID)
	ctx := context.Background()
	for b.Loop() {
		if err := e.AdmitCreate(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	if images.callCount() != 1 {
		b.Fatalf("ImageStatus called %d times, want 1", images.callCount())
	}
}
