package hoststate

import (
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// readTree returns the regular files under dir by slash-separated path.
func readTree(t testing.TB, dir string) (map[string][]byte, error) {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = b
		return nil
	})
	return out, err
}

func sameTree(a, b map[string][]byte) bool {
	return maps.EqualFunc(a, b, func(x, y []byte) bool { return string(x) == string(y) })
}

// entries lists a directory's names, sorted.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestSwapDir(t *testing.T) {
	v1 := map[string][]byte{"a.yaml": []byte("one"), "release/release.pem": []byte("cert"), "x/y/z.txt": []byte("deep")}
	v2 := map[string][]byte{"b.yaml": []byte("two")}
	type step struct {
		files       map[string][]byte
		wantChanged bool
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, parent, link string) // before the steps
		steps []step
		// wantKept are parent entries (besides the link and the current
		// tree) that must be there afterwards, with the file they hold.
		wantKept map[string]string
	}{
		{name: "fresh", steps: []step{{v1, true}}},
		{name: "unchanged is no change", steps: []step{{v1, true}, {v1, false}, {v1, false}}},
		{name: "change, then back", steps: []step{{v1, true}, {v2, true}, {v2, false}, {v1, true}}},
		{name: "empty tree", steps: []step{{map[string][]byte{}, true}, {nil, false}, {v2, true}}},
		{
			name: "parent does not exist yet",
			setup: func(t *testing.T, parent, link string) {
				if err := os.Remove(parent); err != nil {
					t.Fatal(err)
				}
			},
			steps: []step{{v1, true}},
		},
		{
			name: "a real directory where the link belongs is moved aside",
			setup: func(t *testing.T, parent, link string) {
				mustWrite(t, filepath.Join(link, "mine.yaml"), "hand-made")
			},
			steps:    []step{{v1, true}, {v2, true}},
			wantKept: map[string]string{".policies-previous/mine.yaml": "hand-made"},
		},
		{
			name: "a second real directory does not replace the first one kept",
			setup: func(t *testing.T, parent, link string) {
				mustWrite(t, filepath.Join(parent, ".policies-previous", "old.yaml"), "first")
				mustWrite(t, filepath.Join(link, "mine.yaml"), "second")
			},
			steps:    []step{{v1, true}},
			wantKept: map[string]string{".policies-previous/old.yaml": "first", ".policies-previous-1/mine.yaml": "second"},
		},
		{
			name: "a regular file where the link belongs is moved aside",
			setup: func(t *testing.T, parent, link string) {
				mustWrite(t, link, "a file")
			},
			steps:    []step{{v1, true}},
			wantKept: map[string]string{".policies-previous": "a file"},
		},
		{
			name: "leftovers of an interrupted swap are replaced, other files kept",
			setup: func(t *testing.T, parent, link string) {
				// A partial copy under v1's own name, a temporary tree, an
				// older hashed tree, and files that are not ours.
				names := slices.Sorted(maps.Keys(v1))
				mustWrite(t, filepath.Join(parent, ".policies-"+treeHash(names, v1), "a.yaml"), "partial")
				mustWrite(t, filepath.Join(parent, ".policies.tmp-123", "a.yaml"), "half")
				mustWrite(t, filepath.Join(parent, ".policies-0123456789abcdef", "a.yaml"), "old")
				mustWrite(t, filepath.Join(parent, ".policies-notes", "n"), "keep me")
				mustWrite(t, filepath.Join(parent, "config.toml"), "keep me too")
				// Trees of sibling links whose names start like this one's.
				mustWrite(t, filepath.Join(parent, ".policies-0123456789abcdef-fedcba9876543210", "a.yaml"), "sibling")
				mustWrite(t, filepath.Join(parent, ".policies.tmp-1-fedcba9876543210", "a.yaml"), "sibling")
			},
			steps: []step{{v1, true}},
			wantKept: map[string]string{
				".policies-notes/n": "keep me", "config.toml": "keep me too",
				".policies-0123456789abcdef-fedcba9876543210/a.yaml": "sibling",
				".policies.tmp-1-fedcba9876543210/a.yaml":            "sibling",
			},
		},
		{
			name: "a link to a tree that is gone is rewritten",
			setup: func(t *testing.T, parent, link string) {
				names := slices.Sorted(maps.Keys(v1))
				if err := os.Symlink(".policies-"+treeHash(names, v1), link); err != nil {
					t.Fatal(err)
				}
			},
			steps: []step{{v1, true}, {v1, false}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := filepath.Join(t.TempDir(), "etc")
			if err := os.Mkdir(parent, 0o755); err != nil {
				t.Fatal(err)
			}
			link := filepath.Join(parent, "policies")
			if tt.setup != nil {
				tt.setup(t, parent, link)
			}
			for i, s := range tt.steps {
				var before os.FileInfo
				if s.wantChanged == false {
					before, _ = os.Lstat(link)
				}
				listed := entriesIfAny(parent)
				changed, err := SwapDir(link, s.files)
				if err != nil || changed != s.wantChanged {
					t.Fatalf("step %d: SwapDir = %v, %v; want %v", i, changed, err, s.wantChanged)
				}
				fi, err := os.Lstat(link)
				if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
					t.Fatalf("step %d: %s is not a symlink: %v %v", i, link, fi, err)
				}
				target, _ := os.Readlink(link)
				if !isHashedDir(target, ".policies-") || filepath.IsAbs(target) {
					t.Fatalf("step %d: link points at %q, want a sibling hashed directory", i, target)
				}
				got, err := readTree(t, link+"/")
				if err != nil || !sameTree(got, s.files) {
					t.Fatalf("step %d: tree %q, %v; want %q", i, got, err, s.files)
				}
				checkModes(t, filepath.Join(parent, target))
				if !s.wantChanged {
					// Nothing touched: the same link, the same entries.
					if before == nil || !os.SameFile(before, fi) || !fi.ModTime().Equal(before.ModTime()) {
						t.Fatalf("step %d: unchanged content replaced the link", i)
					}
					if now := entries(t, parent); !slices.Equal(now, listed) {
						t.Fatalf("step %d: unchanged content changed %v to %v", i, listed, now)
					}
				}
			}
			// Left: the link, the current tree, and what must be kept.
			target, _ := os.Readlink(link)
			want := []string{"policies", target}
			for p, content := range tt.wantKept {
				want = append(want, strings.Split(p, "/")[0])
				if b, err := os.ReadFile(filepath.Join(parent, filepath.FromSlash(p))); err != nil || string(b) != content {
					t.Errorf("%s: %q, %v; want %q kept", p, b, err, content)
				}
			}
			slices.Sort(want)
			want = slices.Compact(want)
			if got := entries(t, parent); !slices.Equal(got, want) {
				t.Errorf("left in %s: %v, want %v", parent, got, want)
			}
		})
	}
}

func entriesIfAny(dir string) []string {
	es, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// checkModes asserts the tree is readable by the daemon whatever the umask.
func checkModes(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o644)
		if d.IsDir() {
			want = 0o755
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", p, fi.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A swap that fails part way leaves the link at the complete old tree and
// nothing of the new one behind.
func TestSwapDirFailureKeepsTheOldTree(t *testing.T) {
	old := map[string][]byte{"a.yaml": []byte("old")}
	tests := []struct {
		name  string
		files map[string][]byte
		setup func(t *testing.T, parent string)
	}{
		// "a" is written as a file, then "a/b" cannot be created under it.
		{name: "a file cannot be written", files: map[string][]byte{"a": []byte("x"), "a/b": []byte("y")}},
		{name: "escaping name", files: map[string][]byte{"../evil": []byte("x")}},
		{name: "absolute name", files: map[string][]byte{"/etc/evil": []byte("x")}},
		{name: "empty name", files: map[string][]byte{"": []byte("x")}},
		{
			// The temporary link's name is taken by a directory that cannot
			// be removed: the new tree is complete, the swap itself fails.
			name:  "the link cannot be swapped",
			files: map[string][]byte{"b.yaml": []byte("new")},
			setup: func(t *testing.T, parent string) {
				mustWrite(t, filepath.Join(parent, ".policies.link-tmp", "busy"), "x")
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			link := filepath.Join(parent, "policies")
			if _, err := SwapDir(link, old); err != nil {
				t.Fatal(err)
			}
			oldTarget, _ := os.Readlink(link)
			if tt.setup != nil {
				tt.setup(t, parent)
			}
			if changed, err := SwapDir(link, tt.files); err == nil || changed {
				t.Fatalf("SwapDir = %v, %v; want an error", changed, err)
			}
			if target, _ := os.Readlink(link); target != oldTarget {
				t.Fatalf("link moved to %q after a failed swap", target)
			}
			if got, err := readTree(t, link+"/"); err != nil || !sameTree(got, old) {
				t.Fatalf("old tree damaged: %q, %v", got, err)
			}
			for _, n := range entries(t, parent) {
				if strings.HasPrefix(n, ".policies.tmp-") {
					t.Errorf("temporary tree %s left behind", n)
				}
			}
			if _, err := os.Lstat(filepath.Join(parent, "evil")); err == nil {
				t.Error("a file was written outside the tree")
			}
		})
	}
}

// A reader that resolves the link once and reads the tree it names only
// ever sees a whole tree, while the writer swaps continuously. (A tree may
// vanish under a slow reader once it is no longer current; that read fails
// rather than mixes.)
func TestSwapDirReadersSeeWholeTrees(t *testing.T) {
	parent := t.TempDir()
	link := filepath.Join(parent, "truststore")
	// Every swap writes content never seen before, so a tree's name is
	// never reused while a reader may still hold it.
	versions := make([]map[string][]byte, 16)
	for i := range versions {
		v := map[string][]byte{}
		for j := range 8 {
			v[fmt.Sprintf("signer-%d/%02d.pem", j%3, j)] = fmt.Appendf(nil, "version %d file %d", i, j)
		}
		versions[i] = v
	}
	if _, err := SwapDir(link, versions[0]); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var whole, vanished atomic.Int32
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				target, err := os.Readlink(link)
				if err != nil {
					t.Errorf("link missing mid-swap: %v", err)
					return
				}
				got, err := readTree(t, filepath.Join(parent, target))
				if err != nil {
					vanished.Add(1)
					continue
				}
				if !slices.ContainsFunc(versions, func(v map[string][]byte) bool { return sameTree(got, v) }) {
					// A tree removed while being walked shows fewer files;
					// only a tree still current must be whole.
					if cur, _ := os.Readlink(link); cur == target {
						t.Errorf("read a partial or mixed tree from the current link: %d files", len(got))
						return
					}
					vanished.Add(1)
					continue
				}
				whole.Add(1)
			}
		}()
	}
	for _, v := range versions[1:] {
		if _, err := SwapDir(link, v); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if whole.Load() == 0 {
		t.Fatal("no reader finished a read")
	}
	t.Logf("whole reads %d, trees gone under a reader %d", whole.Load(), vanished.Load())
}
