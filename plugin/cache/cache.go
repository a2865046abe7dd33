// Package cache keeps verification facts keyed by content (an image digest
// plus the trust material it was checked against), never by tag: a tag can
// move, a digest cannot. It is an LRU with a TTL, can be persisted to a file
// so a restarted node can start already-verified images while offline, and
// coalesces concurrent identical computations into one.
package cache

import (
	"container/list"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Options configure a Cache.
type Options struct {
	Size int           // entries kept; <= 0 means 10000
	TTL  time.Duration // how long an entry is trusted; <= 0 means 1h
	// TTLFor, if set, gives a value its own lifetime (<= 0: TTL), e.g. a
	// shorter one for "nothing found", which the next minute may change.
	TTLFor func(v any) time.Duration
	Now    func() time.Time
}

// Stats are counters for metrics.
type Stats struct {
	Hits, Misses, Coalesced, Evictions uint64
	Entries                            int
}

// Cache is safe for concurrent use.
type Cache[V any] struct {
	opts Options

	mu       sync.Mutex
	entries  map[string]*list.Element
	order    *list.List // front = most recently used
	inflight map[string]*call[V]
	stats    Stats
}

type entry[V any] struct {
	Key     string    `json:"key"`
	Value   V         `json:"value"`
	Expires time.Time `json:"expires"`
}

type call[V any] struct {
	done chan struct{}
	val  V
	err  error
}

// New returns an empty cache.
func New[V any](opts Options) *Cache[V] {
	if opts.Size <= 0 {
		opts.Size = 10000
	}
	if opts.TTL <= 0 {
		opts.TTL = time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Cache[V]{
		opts:     opts,
		entries:  make(map[string]*list.Element),
		order:    list.New(),
		inflight: make(map[string]*call[V]),
	}
}

// Get returns the live value for key.
func (c *Cache[V]) Get(key string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.getLocked(key)
	if ok {
		c.stats.Hits++
	} else {
		c.stats.Misses++
	}
	return v, ok
}

func (c *Cache[V]) getLocked(key string) (V, bool) {
	var zero V
	el, ok := c.entries[key]
	if !ok {
		return zero, false
	}
	e := el.Value.(*entry[V])
	if !c.opts.Now().Before(e.Expires) {
		c.removeLocked(el)
		return zero, false
	}
	c.order.MoveToFront(el)
	return e.Value, true
}

// Put stores v under key for its TTL.
func (c *Cache[V]) Put(key string, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(&entry[V]{Key: key, Value: v, Expires: c.expiry(v)})
}

func (c *Cache[V]) expiry(v V) time.Time {
	ttl := c.opts.TTL
	if c.opts.TTLFor != nil {
		if t := c.opts.TTLFor(v); t > 0 {
			ttl = t
		}
	}
	return c.opts.Now().Add(ttl)
}

func (c *Cache[V]) putLocked(e *entry[V]) {
	if el, ok := c.entries[e.Key]; ok {
		el.Value = e
		c.order.MoveToFront(el)
		return
	}
	c.entries[e.Key] = c.order.PushFront(e)
	for c.order.Len() > c.opts.Size {
		c.removeLocked(c.order.Back())
		c.stats.Evictions++
	}
}

func (c *Cache[V]) removeLocked(el *list.Element) {
	c.order.Remove(el)
	delete(c.entries, el.Value.(*entry[V]).Key)
}

// Delete forgets key.
func (c *Cache[V]) Delete(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[key]; ok {
		c.removeLocked(el)
	}
}

// Do returns the cached value for key, or computes it with fn. Concurrent
// callers for the same key wait for one computation (shared reports that
// this caller did not run fn). fn runs detached from the first caller's
// cancellation so that one impatient client does not fail everyone waiting;
// fn must bound its own time. Errors are returned to every waiter and not
// cached: the next call tries again.
func (c *Cache[V]) Do(ctx context.Context, key string, fn func(ctx context.Context) (V, error)) (v V, shared bool, err error) {
	c.mu.Lock()
	if v, ok := c.getLocked(key); ok {
		c.stats.Hits++
		c.mu.Unlock()
		return v, false, nil
	}
	c.stats.Misses++
	return c.computeLocked(ctx, key, fn)
}

// Refresh computes the value for key with fn even when one is cached, and
// stores it on success; on error the cached value, if any, stays. A
// computation for key already in flight is joined instead.
func (c *Cache[V]) Refresh(ctx context.Context, key string, fn func(ctx context.Context) (V, error)) (V, error) {
	c.mu.Lock()
	v, _, err := c.computeLocked(ctx, key, fn)
	return v, err
}

// computeLocked runs fn for key, or joins the run in flight, and waits for
// it; it is entered with c.mu held and releases it.
func (c *Cache[V]) computeLocked(ctx context.Context, key string, fn func(ctx context.Context) (V, error)) (V, bool, error) {
	cl, running := c.inflight[key]
	if running {
		c.stats.Coalesced++
	} else {
		cl = &call[V]{done: make(chan struct{})}
		c.inflight[key] = cl
		go c.run(context.WithoutCancel(ctx), key, cl, fn)
	}
	c.mu.Unlock()

	select {
	case <-cl.done:
		return cl.val, running, cl.err
	case <-ctx.Done():
		var zero V
		return zero, running, ctx.Err()
	}
}

func (c *Cache[V]) run(ctx context.Context, key string, cl *call[V], fn func(context.Context) (V, error)) {
	defer close(cl.done)
	defer func() {
		// A panic in fn must not leave waiters hanging forever.
		if r := recover(); r != nil {
			cl.err = fmt.Errorf("compute %s: panic: %v", key, r)
		}
		c.mu.Lock()
		delete(c.inflight, key)
		if cl.err == nil {
			c.putLocked(&entry[V]{Key: key, Value: cl.val, Expires: c.expiry(cl.val)})
		}
		c.mu.Unlock()
	}()
	cl.val, cl.err = fn(ctx)
}

// Stats returns a snapshot of the counters.
func (c *Cache[V]) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries = c.order.Len()
	return s
}

// fileFormat is versioned so a future change of V is detected, not misread.
type fileFormat[V any] struct {
	Version int         `json:"version"`
	Entries []*entry[V] `json:"entries"`
}

const fileVersion = 1

// Save writes the live entries to path atomically (temp file + rename), most
// recently used first, readable only by the owner.
func (c *Cache[V]) Save(path string) error {
	c.mu.Lock()
	now := c.opts.Now()
	out := fileFormat[V]{Version: fileVersion}
	for el := c.order.Front(); el != nil; el = el.Next() {
		if e := el.Value.(*entry[V]); now.Before(e.Expires) {
			out.Entries = append(out.Entries, e)
		}
	}
	data, err := json.Marshal(out)
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("encode cache: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("save cache %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".cache-*")
	if err != nil {
		return fmt.Errorf("save cache %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("save cache %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save cache %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save cache %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save cache %s: %w", path, err)
	}
	return nil
}

// Load adds the live entries of a file written by Save. A missing file is
// not an error (first start); a corrupt one is, and loads nothing.
func (c *Cache[V]) Load(path string) (int, error) {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("load cache %s: %w", path, err)
	}
	var in fileFormat[V]
	if err := json.Unmarshal(data, &in); err != nil {
		return 0, fmt.Errorf("load cache %s: %w", path, err)
	}
	if in.Version != fileVersion {
		return 0, fmt.Errorf("load cache %s: version %d, want %d", path, in.Version, fileVersion)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now, n := c.opts.Now(), 0
	// Oldest first so the file's most recent entries end up most recent here.
	for i := len(in.Entries) - 1; i >= 0; i-- {
		e := in.Entries[i]
		if e == nil || e.Key == "" || !now.Before(e.Expires) {
			continue
		}
		c.putLocked(e)
		n++
	}
	return n, nil
}
