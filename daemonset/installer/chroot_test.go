package installer

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemdThroughChroot runs the real Systemd + ChrootRunner against a
// host root whose "nsenter" is a static stub recording its argv: the chroot
// and the host-side lookup are real, only systemd is missing here.
func TestSystemdThroughChroot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chroot needs root")
	}
	root := t.TempDir()
	src := filepath.Join(t.TempDir(), "main.go")
	stub := `package main

import (
	"os"
	"strings"
)

func main() {
	_ = os.WriteFile("/argv.txt", []byte(strings.Join(os.Args[1:], " ")), 0o644)
	if len(os.Args) > 1 && os.Args[len(os.Args)-1] == "broken.service" {
		os.Stderr.WriteString("Job for broken.service failed")
		os.Exit(1)
	}
}
`
	if err := os.WriteFile(src, []byte(stub), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", filepath.Join(root, "usr/bin/nsenter"), src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build stub: %v\n%s", err, out)
	}
	s := Systemd{HostRoot: root}
	ctx := context.Background()
	if err := s.Restart(ctx, KubeletUnit); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(root, "argv.txt")) // written at "/" inside the chroot
	if err != nil {
		t.Fatal(err)
	}
	if want := "--target 1 --mount --uts --ipc --net --pid -- systemctl restart kubelet.service"; string(got) != want {
		t.Errorf("host saw argv %q, want %q", got, want)
	}
	err = s.Start(ctx, "broken.service")
	if err == nil || !strings.Contains(err.Error(), "Job for broken.service failed") {
		t.Errorf("failure not reported with systemctl's output: %v", err)
	}
}
