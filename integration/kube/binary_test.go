package kube

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The real binary, as the DaemonSet runs it: `pullguard-agent policy-sync` with a kubeconfig, the
// node config under a host root, and its health endpoint.
func TestPolicySyncBinary(t *testing.T) {
	srv := server(t)
	ctx := context.Background()
	admin := dynamicFor(t, srv, AdminUser)
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	bin := os.Getenv("PULLGUARD_AGENT_BIN")
	if bin == "" {
		bin = filepath.Join(work, "pullguard-agent")
		build := exec.Command("go", "build", "-o", bin, "./cmd/pullguard-agent")
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
	}
	host := filepath.Join(work, "host")
	files := map[string]string{
		"etc/pullguard/config.toml":             "[policy]\ndir = \"/etc/pullguard/policies\"\n\n[[signers]]\nname = \"release\"\ntrust_store = \"/etc/pullguard/signers/release\"\n",
		"etc/pullguard/policies/from-file.yaml": "apiVersion: pullguard.dev/v1beta1\nkind: ImagePolicy\nmetadata: {name: from-file, namespace: team-a}\nspec: {repositories: [{name: \"*\"}]}\n",
	}
	for name, data := range files {
		p := filepath.Join(host, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rc := config(t, srv, AgentUser)
	kubeconfig := filepath.Join(work, "kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: t, cluster: {server: %q, certificate-authority-data: %s}}]
users: [{name: agent, user: {token: %q}}]
contexts: [{name: c, context: {cluster: t, user: agent}}]
current-context: c
`, rc.Host, base64.StdEncoding.EncodeToString(rc.CAData), rc.BearerToken)
	if err := os.WriteFile(kubeconfig, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	health := l.Addr().String()
	l.Close()
	dir := filepath.Join(host, "etc/pullguard/crd-policies")
	cmd := exec.Command(bin, "policy-sync", "--kubeconfig", kubeconfig, "--dir", dir,
		"--node-config", filepath.Join(host, "etc/pullguard/config.toml"), "--host-root", host,
		"--namespace", "pullguard-system", "--identity", "bin-node", "--health-address", health)
	logs, err := os.Create(filepath.Join(work, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
	}()
	logTail := func() string { b, _ := os.ReadFile(logs.Name()); return string(b) }

	for name, spec := range map[string]map[string]any{
		"from-file":      repos("dup.example.com/*"), // duplicates the node's file: rejected
		"signed":         {"repositories": []any{map[string]any{"name": "bin.example.com/*", "policy": map[string]any{"trust": map[string]any{"enabled": true, "signerSecrets": []any{map[string]any{"name": "release"}}}}}}},
		"unknown-signer": {"repositories": []any{map[string]any{"name": "nope.example.com/*", "policy": map[string]any{"trust": map[string]any{"enabled": true, "signers": []any{"ghost"}}}}}},
	} {
		if _, err := policies(admin, "team-a").Create(ctx, policyObject("team-a", name, spec), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = policies(admin, "team-a").Delete(context.Background(), name, metav1.DeleteOptions{}) })
	}
	expectDecision(t, dir, "team-a", "bin.example.com/x:1", true, "team-a/signed")
	for _, img := range []string{"dup.example.com/x:1", "nope.example.com/x:1"} {
		if ok, _, _ := decide(dir, "team-a", img); ok {
			t.Errorf("%s admitted by a rejected object\n%s", img, logTail())
		}
	}
	waitFor(t, 10*time.Second, "/readyz 200", func() (bool, string) {
		res, err := http.Get("http://" + health + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res.StatusCode == 200 && strings.Contains(string(body), "2 objects rejected"), fmt.Sprintf("%d %s", res.StatusCode, body)
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err // for the deferred wait
		if err != nil {
			t.Fatalf("policy-sync exited with %v\n%s", err, logTail())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("policy-sync did not stop on SIGTERM\n%s", logTail())
	}
}
