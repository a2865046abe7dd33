// Command demo shows pullguard at work on real components: it starts a registry, containerd and
// pullguard under a temporary directory, pushes two images, and pulls both with crictl as kubelet
// would -- one admitted by the namespace's policy, one denied -- then stops everything, also on
// Ctrl-C. Needs the pinned tools: `make tools` (bash integration/tools/install.sh).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pullguard/pullguard/integration/testbed"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer) (err error) {
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	say("== starting a registry and containerd under /tmp (loopback and unix sockets only)")
	b, err := testbed.Start(ctx, testbed.Options{Logger: logger})
	if err != nil {
		return err
	}
	defer func() {
		say("\n== stopping pullguard, pods, containerd and the registry; removing %s", b.Dir)
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if cerr := b.Close(cctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", cerr))
			return
		}
		say("nothing left running")
	}()
	say("registry:   http://%s", b.Registry.Host)
	say("containerd: %s", b.Containerd.Socket)

	approved, err := pushTiny(ctx, b, "approved/hello:v1")
	if err != nil {
		return err
	}
	unapproved, err := pushTiny(ctx, b, "unvetted/hello:v1")
	if err != nil {
		return err
	}
	say("pushed %s\npushed %s", approved.Ref, unapproved.Ref)

	policy := fmt.Sprintf(`apiVersion: securityenforcement.admission.cloud.ibm.com/v1beta1
kind: ImagePolicy
metadata:
  name: demo-policy
  namespace: demo
spec:
  repositories:
  # Images from the approved project are admitted without further checks.
  - name: "%s/approved/*"
`, b.Registry.Host)
	say("\n== starting pullguard in front of containerd, with this policy for namespace \"demo\":\n%s", policy)
	pg, err := b.StartPullguard(ctx, testbed.PullguardOptions{PolicyFiles: map[string]string{"demo-policy.yaml": policy}})
	if err != nil {
		return err
	}
	say("pullguard:  %s (config %s)", pg.Socket, pg.ConfigPath)

	pod, err := b.WritePodConfig(testbed.PodConfig{Name: "demo-pod", Namespace: "demo"})
	if err != nil {
		return err
	}
	say("pod sandbox config for the pulls (what kubelet sends): %s, metadata.namespace = \"demo\"", pod)
	show := func(c *testbed.Crictl, args ...string) testbed.Result {
		say("\n$ %s", c.Display(args...))
		r := c.Run(ctx, args...)
		fmt.Fprint(out, r.Stdout, r.Stderr)
		return r
	}

	say("\n== 1. kubelet pulls an image of the approved project for a pod in namespace \"demo\"")
	if r := show(pg.Crictl, "pull", "--pod-config", pod, approved.Ref); r.Err != nil {
		return fmt.Errorf("the approved image was not admitted: %w", r.Err)
	}
	say("-> admitted")

	say("\n== 2. the same pod asks for an image no rule of its namespace admits")
	r := show(pg.Crictl, "pull", "--pod-config", pod, unapproved.Ref)
	if r.Err == nil {
		return errors.New("the unvetted image was admitted")
	}
	if !strings.Contains(r.Output(), "SignatureValidationFailed: ") {
		return errors.New("the denial lacks the SignatureValidationFailed message")
	}
	say("-> denied; kubelet would report the pod's reason as SignatureValidationFailed")

	say("\n== 3. what containerd itself holds (asked directly, not through pullguard)")
	show(b.Crictl, "images")
	has, err := b.ContainerdHasImage(ctx, unapproved.Ref, true)
	if err != nil {
		return err
	}
	if has {
		return errors.New("containerd holds the denied image")
	}
	say("-> the denied image never reached containerd")

	say("\n== 4. pullguard's audit log: one JSON line per decision")
	for _, l := range pg.LogLines(`"event":"decision"`) {
		say("%s", l)
	}
	return nil
}

func pushTiny(ctx context.Context, b *testbed.Bed, repoTag string) (testbed.PushedImage, error) {
	img, err := testbed.TinyImage("pullguard demo " + repoTag)
	if err != nil {
		return testbed.PushedImage{}, err
	}
	return b.Registry.Push(ctx, repoTag, img)
}
