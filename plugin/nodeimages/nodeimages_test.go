package nodeimages

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// store stands in for containerd's image and content services, over real gRPC on a unix
// socket; the integration suite runs the same code against containerd itself.
type store struct {
	imagesapi.UnimplementedImagesServer
	mu      sync.Mutex
	records []*imagesapi.Image
	blobs   map[string][]byte
	lists   int
	// tamper serves these bytes for a digest instead of its content.
	tamper map[string][]byte
}

func (s *store) List(ctx context.Context, _ *imagesapi.ListImagesRequest) (*imagesapi.ListImagesResponse, error) {
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get("containerd-namespace")) != 1 || md.Get("containerd-namespace")[0] != "k8s.io" {
		return nil, status.Error(codes.FailedPrecondition, "no namespace")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lists++
	return &imagesapi.ListImagesResponse{Images: append([]*imagesapi.Image(nil), s.records...)}, nil
}

// contentService is the store's content side (both services have a Delete).
type contentService struct {
	contentapi.UnimplementedContentServer
	s *store
}

func (c contentService) Read(req *contentapi.ReadContentRequest, srv contentapi.Content_ReadServer) error {
	s := c.s
	s.mu.Lock()
	b, ok := s.blobs[req.GetDigest()]
	if t, tampered := s.tamper[req.GetDigest()]; tampered {
		b = t
	}
	s.mu.Unlock()
	if !ok {
		return status.Error(codes.NotFound, "content not found")
	}
	for len(b) > 0 { // several chunks, as containerd sends big blobs
		n := min(len(b), 1000)
		if err := srv.Send(&contentapi.ReadContentResponse{Data: b[:n]}); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func (s *store) put(v any) string {
	b, _ := json.Marshal(v)
	sum := sha256.Sum256(b)
	d := "sha256:" + hex.EncodeToString(sum[:])
	s.mu.Lock()
	s.blobs[d] = b
	s.mu.Unlock()
	return d
}

func (s *store) name(name, target string, labels map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.records {
		if r.Name == name {
			r.Target.Digest = target
			return
		}
	}
	s.records = append(s.records, &imagesapi.Image{Name: name, Target: &types.Descriptor{Digest: target}, Labels: labels})
}

func manifest(config string) map[string]any {
	return map[string]any{"schemaVersion": 2, "config": map[string]any{"digest": config}, "layers": []any{}}
}

func index(children ...string) map[string]any {
	var m []any
	for _, c := range children {
		m = append(m, map[string]any{"digest": c})
	}
	return map[string]any{"schemaVersion": 2, "manifests": m}
}

func startStore(t *testing.T) (*store, *Index, *time.Time) {
	t.Helper()
	s := &store{blobs: map[string][]byte{}, tamper: map[string][]byte{}}
	sock := filepath.Join(t.TempDir(), "c.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	imagesapi.RegisterImagesServer(srv, s)
	contentapi.RegisterContentServer(srv, contentService{s: s})
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	x := New(Options{Conn: conn, Now: func() time.Time { return now }})
	return s, x, &now
}

const (
	idA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	idB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	idC = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
)

func names(refs []Ref) string {
	var out []string
	for _, r := range refs {
		out = append(out, r.Name+"="+r.Target[:15])
	}
	return strings.Join(out, ",")
}

// TestIndexMapsImageIDsToRecords: image IDs map to every record whose target resolves to them,
// through indexes too, with the record's real target; a record whose content is missing or does
// not hash to its digest is not believed.
func TestIndexMapsImageIDsToRecords(t *testing.T) {
	s, x, _ := startStore(t)
	ctx := context.Background()
	mA, mB := s.put(manifest(idA)), s.put(manifest(idB))
	idx := s.put(index(mA, mB, "sha256:"+strings.Repeat("9", 64))) // a platform never fetched
	s.name("reg.example/app:v1", mA, nil)
	s.name("reg.example/app@"+mA, mA, nil)
	s.name("reg.example/multi:1", idx, nil)
	// A record named by one digest but pointing at other content: its real target counts.
	s.name("reg.example/good@"+mA, mB, nil)
	s.name("reg.example/missing:1", "sha256:"+strings.Repeat("1", 64), nil)
	tampered := s.put(manifest(idC))
	s.tamper[tampered] = []byte(`{"config":{"digest":"` + idA + `"}}`)
	s.name("reg.example/tampered:1", tampered, nil)
	s.name("registry.k8s.io/pause:3.10", mB, map[string]string{"io.cri-containerd.pinned": "pinned"})

	refs, err := x.ByImageID(ctx, idA)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(refs), "reg.example/app:v1="+mA[:15]+",reg.example/app@"+mA+"="+mA[:15]+",reg.example/multi:1="+idx[:15]; got != want {
		t.Errorf("image A: %s\nwant %s", got, want)
	}
	refs, _ = x.ByImageID(ctx, idB)
	if got := names(refs); !strings.Contains(got, "reg.example/good@"+mA+"="+mB[:15]) || !strings.Contains(got, "reg.example/multi:1") {
		t.Errorf("image B: %s: want the re-pointed record with its real target, and the index", got)
	}
	if refs, _ := x.ByImageID(ctx, idC); len(refs) != 0 {
		t.Errorf("content that does not hash to its digest was believed: %s", names(refs))
	}
	if refs, _ := x.ByTarget(ctx, idx); len(refs) != 1 || refs[0].Name != "reg.example/multi:1" {
		t.Errorf("by target: %s", names(refs))
	}
	if ids := x.ImageIDs(idx); len(ids) != 2 {
		t.Errorf("index resolves to %v, want both platform configs", ids)
	}
	if p, _ := x.Pinned(ctx, time.Hour); len(p) != 1 || p[0].Name != "registry.k8s.io/pause:3.10" {
		t.Errorf("pinned: %v", p)
	}
}

// TestIndexRefreshes: a miss reads containerd's records again; so do a hit after Invalidate and
// a hit on a snapshot older than MaxAge; a fresh hit does not.
func TestIndexRefreshes(t *testing.T) {
	s, x, now := startStore(t)
	ctx := context.Background()
	mA := s.put(manifest(idA))
	s.name("reg.example/a:1", mA, nil)
	lists := func() int { s.mu.Lock(); defer s.mu.Unlock(); return s.lists }
	if refs, _ := x.ByImageID(ctx, idA); len(refs) != 1 || lists() != 1 {
		t.Fatalf("first lookup: %v, %d lists", refs, lists())
	}
	if _, _ = x.ByImageID(ctx, idA); lists() != 1 {
		t.Errorf("a fresh hit listed again")
	}
	mB := s.put(manifest(idB))
	s.name("reg.example/b:1", mB, nil)
	if refs, _ := x.ByImageID(ctx, idB); len(refs) != 1 || lists() != 2 {
		t.Errorf("a miss: %v, %d lists", refs, lists())
	}
	// A new name for known content is seen after Invalidate (a pull through pullguard) ...
	s.name("reg.example/a-again:1", mA, nil)
	x.Invalidate()
	if refs, _ := x.ByImageID(ctx, idA); len(refs) != 2 {
		t.Errorf("after Invalidate: %s", names(refs))
	}
	// ... or once the snapshot is older than MaxAge (a name added with ctr).
	s.name("reg.example/a-third:1", mA, nil)
	*now = now.Add(time.Minute)
	if refs, _ := x.ByImageID(ctx, idA); len(refs) != 3 {
		t.Errorf("after MaxAge: %s", names(refs))
	}
}

// TestIndexBounds: a manifest larger than MaxManifestBytes is not read whole, and indexes nested
// deeper than maxDepth are not followed.
func TestIndexBounds(t *testing.T) {
	s, x, _ := startStore(t)
	ctx := context.Background()
	big := s.put(map[string]any{"config": map[string]any{"digest": idA}, "pad": strings.Repeat("x", MaxManifestBytes)})
	s.name("reg.example/big:1", big, nil)
	m := s.put(manifest(idB))
	deep := s.put(index(s.put(index(s.put(index(m))))))
	s.name("reg.example/deep:1", deep, nil)
	if refs, _ := x.ByImageID(ctx, idA); len(refs) != 0 {
		t.Errorf("an oversized manifest was read: %s", names(refs))
	}
	if refs, _ := x.ByImageID(ctx, idB); len(refs) != 0 {
		t.Errorf("an index nested %d deep was followed: %s", maxDepth+1, names(refs))
	}
}
