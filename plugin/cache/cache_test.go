package cache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newClock() *clock { return &clock{now: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)} }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling interval, not synchronisation
	}
}

func TestTTLExpires(t *testing.T) {
	clk := newClock()
	c := New[string](Options{TTL: time.Minute, Now: clk.Now})
	c.Put("sha256:a", "facts")
	if v, ok := c.Get("sha256:a"); !ok || v != "facts" {
		t.Fatalf("Get = %q %v, want facts true", v, ok)
	}
	clk.Add(59 * time.Second)
	if _, ok := c.Get("sha256:a"); !ok {
		t.Fatal("entry expired before its TTL")
	}
	clk.Add(time.Second)
	if _, ok := c.Get("sha256:a"); ok {
		t.Fatal("entry alive at its TTL")
	}
	if s := c.Stats(); s.Entries != 0 {
		t.Fatalf("expired entry still counted: %+v", s)
	}
}

func TestLRUEvictsLeastRecentlyUsed(t *testing.T) {
	c := New[int](Options{Size: 2})
	c.Put("a", 1)
	c.Put("b", 2)
	c.Get("a") // a is now more recent than b
	c.Put("c", 3)
	if _, ok := c.Get("b"); ok {
		t.Fatal("b survived although it was least recently used")
	}
	for _, k := range []string{"a", "c"} {
		if _, ok := c.Get(k); !ok {
			t.Fatalf("%s was evicted", k)
		}
	}
	if s := c.Stats(); s.Evictions != 1 || s.Entries != 2 {
		t.Fatalf("stats %+v, want 1 eviction and 2 entries", s)
	}
}

func TestDoCoalescesConcurrentCalls(t *testing.T) {
	c := New[string](Options{})
	var calls atomic.Int32
	release := make(chan struct{})
	fn := func(ctx context.Context) (string, error) {
		calls.Add(1)
		<-release
		return "verified", nil
	}
	const n = 100
	var wg sync.WaitGroup
	results := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], _, errs[i] = c.Do(context.Background(), "sha256:x", fn)
		}()
	}
	waitFor(t, "all callers to join the computation", func() bool { return c.Stats().Coalesced == n-1 })
	close(release)
	wg.Wait()
	if got := calls.Load(); got != 1 {
		t.Fatalf("fn ran %d times, want 1", got)
	}
	for i := range n {
		if errs[i] != nil || results[i] != "verified" {
			t.Fatalf("caller %d got %q, %v", i, results[i], errs[i])
		}
	}
	// And the result is now cached.
	if _, shared, err := c.Do(context.Background(), "sha256:x", func(context.Context) (string, error) {
		t.Fatal("fn ran again for a cached key")
		return "", nil
	}); err != nil || shared {
		t.Fatalf("cached Do: shared=%v err=%v", shared, err)
	}
}

func TestDoErrorsAreNotCached(t *testing.T) {
	c := New[string](Options{})
	boom := errors.New("registry down")
	if _, _, err := c.Do(context.Background(), "k", func(context.Context) (string, error) { return "", boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want %v", err, boom)
	}
	v, _, err := c.Do(context.Background(), "k", func(context.Context) (string, error) { return "ok", nil })
	if err != nil || v != "ok" {
		t.Fatalf("second Do = %q, %v; the error was cached", v, err)
	}
}

func TestDoPanicBecomesError(t *testing.T) {
	c := New[string](Options{})
	_, _, err := c.Do(context.Background(), "k", func(context.Context) (string, error) { panic("bad report") })
	if err == nil {
		t.Fatal("panic in fn returned no error")
	}
}

func TestDoWaiterCancellationDoesNotCancelComputation(t *testing.T) {
	c := New[string](Options{})
	release := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	var fnCtxErr atomic.Value
	done := make(chan error, 1)
	go func() {
		_, _, err := c.Do(ctx, "k", func(fctx context.Context) (string, error) {
			<-release
			fnCtxErr.Store(fmt.Sprint(fctx.Err()))
			return "v", nil
		})
		done <- err
	}()
	waitFor(t, "computation to start", func() bool { return c.Stats().Misses == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter got %v", err)
	}
	close(release)
	waitFor(t, "computation to finish and be cached", func() bool { _, ok := c.Get("k"); return ok })
	if got := fnCtxErr.Load(); got != "<nil>" {
		t.Fatalf("fn saw its context cancelled: %v", got)
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	clk := newClock()
	path := filepath.Join(t.TempDir(), "state", "facts.json")
	c := New[map[string]string](Options{TTL: time.Hour, Now: clk.Now})
	c.Put("old", map[string]string{"signer": "a"})
	clk.Add(50 * time.Minute)
	c.Put("new", map[string]string{"signer": "b"})
	if err := c.Save(path); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		t.Fatalf("cache file mode %v is readable by others", st.Mode().Perm())
	}

	clk.Add(20 * time.Minute) // "old" expired meanwhile, "new" has 40 min left
	d := New[map[string]string](Options{TTL: time.Hour, Now: clk.Now})
	n, err := d.Load(path)
	if err != nil || n != 1 {
		t.Fatalf("Load = %d, %v; want 1 live entry", n, err)
	}
	if v, ok := d.Get("new"); !ok || v["signer"] != "b" {
		t.Fatalf("Get(new) = %v %v", v, ok)
	}
	if _, ok := d.Get("old"); ok {
		t.Fatal("expired entry came back from disk")
	}
	clk.Add(40 * time.Minute)
	if _, ok := d.Get("new"); ok {
		t.Fatal("loaded entry outlived its original expiry")
	}
}

func TestLoadMissingAndCorruptFiles(t *testing.T) {
	dir := t.TempDir()
	c := New[string](Options{})
	if n, err := c.Load(filepath.Join(dir, "absent.json")); err != nil || n != 0 {
		t.Fatalf("missing file: %d, %v", n, err)
	}
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"version":1,"entries":[{"key":`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Load(bad); err == nil {
		t.Fatal("corrupt file loaded without error")
	}
	other := filepath.Join(dir, "v2.json")
	if err := os.WriteFile(other, []byte(`{"version":2,"entries":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Load(other); err == nil {
		t.Fatal("file of another version loaded without error")
	}
}

func BenchmarkGetHit(b *testing.B) {
	c := New[string](Options{})
	c.Put("sha256:abc", "facts")
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := c.Get("sha256:abc"); !ok {
			b.Fatal("miss")
		}
	}
}

func BenchmarkDoHit(b *testing.B) {
	c := New[string](Options{})
	c.Put("sha256:abc", "facts")
	ctx := context.Background()
	fn := func(context.Context) (string, error) { return "", errors.New("unexpected") }
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := c.Do(ctx, "sha256:abc", fn); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRefreshAndTTLFor: Refresh computes again even when a value is cached and keeps the old one
// when the computation fails; TTLFor gives some values a shorter life.
func TestRefreshAndTTLFor(t *testing.T) {
	clk := newClock()
	c := New[string](Options{TTL: time.Hour, Now: clk.Now, TTLFor: func(v any) time.Duration {
		if v == "nothing found" {
			return time.Minute
		}
		return 0
	}})
	ctx := context.Background()
	c.Put("k", "v1")
	got, err := c.Refresh(ctx, "k", func(context.Context) (string, error) { return "v2", nil })
	if err != nil || got != "v2" {
		t.Fatalf("Refresh: %q %v", got, err)
	}
	if v, ok := c.Get("k"); !ok || v != "v2" {
		t.Errorf("after Refresh: %q %v, want v2", v, ok)
	}
	if _, err := c.Refresh(ctx, "k", func(context.Context) (string, error) { return "", errors.New("registry down") }); err == nil {
		t.Error("a failed Refresh returned no error")
	}
	if v, ok := c.Get("k"); !ok || v != "v2" {
		t.Errorf("after a failed Refresh: %q %v, want v2 kept", v, ok)
	}
	c.Put("neg", "nothing found")
	clk.Add(2 * time.Minute)
	if _, ok := c.Get("neg"); ok {
		t.Error("a value TTLFor gives a minute outlived it")
	}
	if v, ok := c.Get("k"); !ok || v != "v2" {
		t.Errorf("a value with the default TTL expired after two minutes: %q %v", v, ok)
	}
}
