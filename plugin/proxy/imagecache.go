package proxy

import (
	"container/list"
	"sync"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The image lookup of a create is containerd's CRI ImageStatus, about as
// costly as the whole rest of a cached create decision. Caching it is safe
// enough because:
//   - only lookups by image ID (the config digest, what kubelet creates by)
//     are cached: the same key always means the same rootfs, whatever names
//     it has. A name is looked up every time: a tag re-pointed on the node
//     (ctr tag) must be decided on what it names now;
//   - names and repo digests change only by a pull, a removal or a tag. Those
//     made through CRI pass through pullguard, which drops the cache
//     (ImagesChanged); those made behind its back (ctr, nerdctl) are honoured
//     at most imageCacheTTL late;
//   - a stale repo digest only makes the engine check a digest that really
//     was pulled as that image, never an unverified one.
const (
	imageCacheTTL = 10 * time.Second
	// imageCacheMax bounds memory against a client creating from many refs;
	// a node rarely holds more than a few hundred images.
	imageCacheMax = 1024
)

// imageCache holds ImageStatus results by the ref they were asked for. Only
// images found are kept: "not on the node" and errors are asked again every
// time, so an image appearing is seen at once and a failure is not replayed.
//
// Cached images are shared between callers and must not be modified.
type imageCache struct {
	now func() time.Time
	ttl time.Duration
	max int

	mu  sync.Mutex
	gen uint64 // bumped by invalidate; a lookup started under an older one is not stored
	// order lists the entries oldest first. With one TTL for all, insertion
	// order is also expiry order, so the front is both the first to expire
	// and the one to evict when full.
	order   *list.List
	entries map[string]*list.Element // ref -> element holding a *imageCacheEntry
}

type imageCacheEntry struct {
	ref     string
	image   *runtimeapi.Image
	expires time.Time
}

func newImageCache(now func() time.Time, ttl time.Duration, max int) *imageCache {
	return &imageCache{
		now:     now,
		ttl:     ttl,
		max:     max,
		order:   list.New(),
		entries: make(map[string]*list.Element),
	}
}

// get returns the cached image for ref, or ok=false and the generation the
// caller must pass to put with what it then looks up.
func (c *imageCache) get(ref string) (img *runtimeapi.Image, gen uint64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, found := c.entries[ref]; found {
		e := el.Value.(*imageCacheEntry)
		if c.now().Before(e.expires) {
			return e.image, c.gen, true
		}
		c.remove(el)
	}
	return nil, c.gen, false
}

// put stores img for ref unless the cache was invalidated since gen was
// taken: the lookup may have raced a pull or removal and seen the old state.
func (c *imageCache) put(ref string, img *runtimeapi.Image, gen uint64) {
	if img == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	now := c.now()
	if el, found := c.entries[ref]; found {
		// A concurrent miss for the same ref stored it first; refresh it.
		e := el.Value.(*imageCacheEntry)
		e.image, e.expires = img, now.Add(c.ttl)
		c.order.MoveToBack(el)
		return
	}
	c.evictExpired(now)
	for c.order.Len() >= c.max && c.order.Len() > 0 {
		c.remove(c.order.Front())
	}
	c.entries[ref] = c.order.PushBack(&imageCacheEntry{ref: ref, image: img, expires: now.Add(c.ttl)})
}

// invalidate drops every entry and makes lookups in flight not store theirs.
func (c *imageCache) invalidate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.order.Init()
	clear(c.entries)
}

// len is the number of entries held, expired or not.
func (c *imageCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// evictExpired drops expired entries from the front; it stops at the first
// live one, so it costs only what it removes.
func (c *imageCache) evictExpired(now time.Time) {
	for el := c.order.Front(); el != nil; el = c.order.Front() {
		if now.Before(el.Value.(*imageCacheEntry).expires) {
			return
		}
		c.remove(el)
	}
}

func (c *imageCache) remove(el *list.Element) {
	delete(c.entries, el.Value.(*imageCacheEntry).ref)
	c.order.Remove(el)
}
