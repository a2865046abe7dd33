// Package nodeimages knows which images containerd holds on the node: for each
// image ID (the config digest containerd runs), the names containerd records
// for it and the manifest or index digest each name targets.
//
// It reads containerd's own image store and content store over containerd's
// API, never a client's request: a name only chooses which repository's
// policy and signatures apply, while the digest it targets is checked against
// the content store, which is addressed by digest. So a name re-pointed on
// the node (ctr images tag --force), an image imported under a signed image's
// name, or an index wrapping another image are all seen as what containerd
// will actually run.
package nodeimages

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Bounds on what is read from containerd: its store is trusted to be
// containerd's, but a node can hold very many images and big indexes.
const (
	// MaxManifestBytes bounds one manifest or index read from the content store.
	MaxManifestBytes = 4 << 20
	// maxChildren bounds the platform manifests read from one index.
	maxChildren = 64
	// maxDepth bounds indexes nested in indexes.
	maxDepth = 2
	// maxRecords bounds the image records one refresh considers.
	maxRecords = 20000
)

// containerd's CRI labels the images it pins (the sandbox image) so; the
// label is containerd's own record.
const (
	pinnedLabel = "io.cri-containerd.pinned"
	pinnedValue = "pinned"
)

// Ref is one name containerd records for an image, with the digest of the
// manifest or index that record targets.
type Ref struct {
	Name   string // as recorded, e.g. "registry.example.com/app:v1"
	Target string // "sha256:…", the record's target (a manifest or an index)
}

// Options configure an Index.
type Options struct {
	// Conn reaches containerd's API (its main socket serves it beside CRI).
	Conn *grpc.ClientConn
	// Namespace is the containerd namespace CRI keeps its images in ("k8s.io").
	Namespace string
	// Timeout bounds one refresh; default 5s.
	Timeout time.Duration
	// MaxAge is how old a snapshot may be before a lookup refreshes it
	// even on a hit, so names added behind pullguard's back (ctr) are seen;
	// default 30s.
	MaxAge time.Duration
	Logger *slog.Logger
	Now    func() time.Time
}

// Index maps image IDs and target digests to the names containerd holds. It
// is a snapshot refreshed on demand: a lookup that misses refreshes it once,
// so an image pulled a moment ago is found without polling.
type Index struct {
	opts    Options
	images  imagesapi.ImagesClient
	content contentapi.ContentClient
	group   singleflight.Group

	mu sync.RWMutex
	// configs caches what each target digest resolves to: content is
	// immutable, so it never goes stale.
	configs map[string][]string
	byID    map[string][]Ref // image ID -> refs
	byTgt   map[string][]Ref // target digest -> refs
	byName  map[string]Ref
	pinned  []Ref     // records containerd's CRI labels as pinned (the sandbox image)
	at      time.Time // when the snapshot was taken
	// gen counts invalidations; seen is the gen the snapshot was taken at.
	// They differ when images changed since: the next lookup refreshes.
	gen, seen uint64
}

// New returns an empty Index; the first lookup fills it.
func New(opts Options) *Index {
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Namespace == "" {
		opts.Namespace = "k8s.io"
	}
	return &Index{
		opts:    opts,
		images:  imagesapi.NewImagesClient(opts.Conn),
		content: contentapi.NewContentClient(opts.Conn),
		configs: map[string][]string{},
	}
}

// ByImageID returns the names containerd holds for the image whose ID
// (config digest) is id. A miss refreshes the snapshot once.
func (x *Index) ByImageID(ctx context.Context, id string) ([]Ref, error) {
	return x.lookup(ctx, func() []Ref { return x.byID[id] })
}

// ByTarget returns the names whose record targets digest d (a manifest or an
// index digest). A miss refreshes the snapshot once.
func (x *Index) ByTarget(ctx context.Context, d string) ([]Ref, error) {
	return x.lookup(ctx, func() []Ref { return x.byTgt[d] })
}

// ByName returns the record named name, and false when containerd holds none.
// The snapshot is refreshed first when it is older than maxAge.
func (x *Index) ByName(ctx context.Context, name string, maxAge time.Duration) (Ref, bool, error) {
	if err := x.refreshIfOlder(ctx, maxAge); err != nil {
		return Ref{}, false, err
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	r, ok := x.byName[name]
	return r, ok, nil
}

// Pinned returns the records containerd's CRI labels as pinned: the images
// it keeps for itself, the sandbox (pause) image among them. The snapshot is
// refreshed first when it is older than maxAge.
func (x *Index) Pinned(ctx context.Context, maxAge time.Duration) ([]Ref, error) {
	if err := x.refreshIfOlder(ctx, maxAge); err != nil {
		return nil, err
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	return slices.Clone(x.pinned), nil
}

func (x *Index) refreshIfOlder(ctx context.Context, maxAge time.Duration) error {
	x.mu.RLock()
	fresh := x.gen == x.seen && !x.at.IsZero() && x.opts.Now().Sub(x.at) <= maxAge
	x.mu.RUnlock()
	if fresh {
		return nil
	}
	return x.Refresh(ctx)
}

// ImageIDs returns the image IDs a target digest resolves to, from the
// content already read (empty when the target is unknown).
func (x *Index) ImageIDs(target string) []string {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return slices.Clone(x.configs[target])
}

// Invalidate says the images on the node changed (a pull or removal went
// through pullguard): the next lookup reads containerd's records again.
func (x *Index) Invalidate() {
	x.mu.Lock()
	x.gen++
	x.mu.Unlock()
}

func (x *Index) lookup(ctx context.Context, get func() []Ref) ([]Ref, error) {
	x.mu.RLock()
	refs := get()
	stale := x.gen != x.seen || x.opts.Now().Sub(x.at) > x.opts.MaxAge
	x.mu.RUnlock()
	if len(refs) > 0 && !stale {
		return slices.Clone(refs), nil
	}
	if err := x.Refresh(ctx); err != nil {
		return nil, err
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	return slices.Clone(get()), nil
}

// Refresh reads containerd's image records again. Concurrent refreshes share
// one read.
func (x *Index) Refresh(ctx context.Context) error {
	ch := x.group.DoChan("refresh", func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), x.opts.Timeout)
		defer cancel()
		return nil, x.refresh(rctx)
	})
	select {
	case r := <-ch:
		return r.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (x *Index) nsCtx(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "containerd-namespace", x.opts.Namespace)
}

func (x *Index) refresh(ctx context.Context) error {
	at := x.opts.Now()
	x.mu.RLock()
	gen := x.gen
	x.mu.RUnlock()
	resp, err := x.images.List(x.nsCtx(ctx), &imagesapi.ListImagesRequest{})
	if err != nil {
		return fmt.Errorf("list containerd images: %w", err)
	}
	records := resp.GetImages()
	if len(records) > maxRecords {
		x.opts.Logger.Warn("containerd holds more image records than pullguard reads; the rest are treated as unknown",
			"records", len(records), "read", maxRecords)
		records = records[:maxRecords]
	}
	x.mu.RLock()
	known := make(map[string][]string, len(x.configs))
	for k, v := range x.configs {
		known[k] = v
	}
	x.mu.RUnlock()

	byID := map[string][]Ref{}
	byTgt := map[string][]Ref{}
	byName := map[string]Ref{}
	var pinned []Ref
	configs := map[string][]string{}
	for _, rec := range records {
		tgt := rec.GetTarget().GetDigest()
		if tgt == "" {
			continue
		}
		ids, ok := known[tgt]
		if !ok {
			ids, err = x.resolveConfigs(ctx, tgt, 0)
			if err != nil {
				// An image still being pulled, or content garbage-collected:
				// it has no ID to run yet. Looked at again next refresh.
				x.opts.Logger.Debug("image record not resolved", "name", rec.GetName(), "target", tgt, "error", err)
				continue
			}
		}
		configs[tgt] = ids
		r := Ref{Name: rec.GetName(), Target: tgt}
		byName[r.Name] = r
		if rec.GetLabels()[pinnedLabel] == pinnedValue {
			pinned = append(pinned, r)
		}
		byTgt[tgt] = append(byTgt[tgt], r)
		for _, id := range ids {
			byID[id] = append(byID[id], r)
		}
	}
	for _, m := range []map[string][]Ref{byID, byTgt} {
		for k := range m {
			slices.SortFunc(m[k], func(a, b Ref) int {
				if a.Name < b.Name {
					return -1
				}
				if a.Name > b.Name {
					return 1
				}
				return 0
			})
		}
	}
	x.mu.Lock()
	x.configs, x.byID, x.byTgt, x.byName, x.pinned, x.at = configs, byID, byTgt, byName, pinned, at
	x.seen = gen
	x.mu.Unlock()
	return nil
}

// resolveConfigs returns the config digests (image IDs) the manifest or index
// d describes: one for a manifest, one per platform manifest of an index.
func (x *Index) resolveConfigs(ctx context.Context, d string, depth int) ([]string, error) {
	raw, err := x.read(ctx, d)
	if err != nil {
		return nil, err
	}
	var m struct {
		Config *struct {
			Digest string `json:"digest"`
		} `json:"config"`
		Manifests []struct {
			Digest string `json:"digest"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("decode %s: %w", d, err)
	}
	if m.Config != nil && m.Config.Digest != "" {
		if err := digest.Digest(m.Config.Digest).Validate(); err != nil {
			return nil, fmt.Errorf("config of %s: %w", d, err)
		}
		return []string{m.Config.Digest}, nil
	}
	if len(m.Manifests) == 0 {
		return nil, fmt.Errorf("%s is neither an image manifest nor an index", d)
	}
	if depth >= maxDepth {
		return nil, fmt.Errorf("%s: indexes nested deeper than %d", d, maxDepth)
	}
	var ids []string
	for i, c := range m.Manifests {
		if i == maxChildren {
			break
		}
		sub, err := x.resolveConfigs(ctx, c.Digest, depth+1)
		if err != nil {
			// Indexes commonly list platforms that were never fetched.
			continue
		}
		for _, id := range sub {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("no platform manifest of %s is on the node", d)
	}
	return ids, nil
}

// read returns the blob d from containerd's content store, checking that its
// bytes hash to d.
func (x *Index) read(ctx context.Context, d string) ([]byte, error) {
	dg := digest.Digest(d)
	if err := dg.Validate(); err != nil {
		return nil, fmt.Errorf("digest %q: %w", d, err)
	}
	if dg.Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("digest %s: only sha256 is supported", d)
	}
	stream, err := x.content.Read(x.nsCtx(ctx), &contentapi.ReadContentRequest{Digest: d})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", d, err)
	}
	var buf []byte
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", d, err)
		}
		if len(buf)+len(chunk.GetData()) > MaxManifestBytes {
			return nil, fmt.Errorf("read %s: larger than %d bytes", d, MaxManifestBytes)
		}
		buf = append(buf, chunk.GetData()...)
	}
	sum := sha256.Sum256(buf)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != d {
		return nil, fmt.Errorf("read %s: content hashes to %s", d, got)
	}
	return buf, nil
}
