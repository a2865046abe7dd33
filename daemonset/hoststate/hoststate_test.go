package hoststate

import (
	"os"
	"path/filepath"
	"testing"
)

func TestStateRoundTrip(t *testing.T) {
	root := Root(t.TempDir())
	if st, err := LoadState(root); st != nil || err != nil {
		t.Fatalf("fresh host: %v, %v", st, err)
	}
	want := &State{Layout: "kubeadm", Upstream: "unix:///run/containerd/containerd.sock", KubeletWired: true,
		Backups: []Backup{{HostPath: "/var/lib/kubelet/config.yaml", BackupPath: BackupDir + "/x", Mode: 0o640}}}
	if err := SaveState(root, want); err != nil {
		t.Fatal(err)
	}
	got, err := LoadState(root)
	if err != nil || got.Upstream != want.Upstream || len(got.Backups) != 1 || got.Backups[0].Mode != 0o640 || !got.KubeletWired {
		t.Fatalf("LoadState = %+v, %v", got, err)
	}
	if err := os.WriteFile(root.Path(StatePath), []byte(`{"version": 99}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadState(root); err == nil {
		t.Error("unknown state version accepted")
	}
}

func TestWriteFileAtomicAndReadBounded(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteFileAtomic(p, []byte("hello"), 0o640); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("stat = %v, %v", fi, err)
	}
	if b, err := ReadBounded(p, 5); err != nil || string(b) != "hello" {
		t.Errorf("ReadBounded(5) = %q, %v", b, err)
	}
	if _, err := ReadBounded(p, 4); err == nil {
		t.Error("ReadBounded read past its limit")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temp files left behind: %v", entries)
	}
}
