// Command demo shows pullguard at work on real components: it starts a registry, containerd and
// pullguard under a temporary directory, pushes four images, signs one with the notation CLI, and
// pulls them with crictl as kubelet would -- one admitted by policy matching alone, one denied
// by it, the signed one admitted pinned to its verified digest, the unsigned one denied for want
// of a signature -- shows `pullguard check` explaining the signed image's admission, then stops
// everything, also on Ctrl-C. Needs the pinned tools: `make tools` (bash integration/tools/install.sh).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pullguard/pullguard/integration/testbed"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout); err != nil {
		if ctx.Err() != nil {
			// A step killed by Ctrl-C fails with "signal: killed"; say what really happened.
			fmt.Fprintln(os.Stderr, "demo: interrupted:", err)
			os.Exit(130)
		}
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
	signed, err := pushTiny(ctx, b, "signed/hello:v1")
	if err != nil {
		return err
	}
	unsigned, err := pushTiny(ctx, b, "unsigned/hello:v1")
	if err != nil {
		return err
	}
	say("pushed %s\npushed %s\npushed %s\npushed %s", approved.Ref, unapproved.Ref, signed.Ref, unsigned.Ref)

	trustStore, identity, err := signWithNotation(ctx, b, say, out, signed)
	if err != nil {
		return err
	}

	policy := fmt.Sprintf(`apiVersion: securityenforcement.admission.cloud.ibm.com/v1beta1
kind: ImagePolicy
metadata:
  name: demo-policy
  namespace: demo
spec:
  repositories:
  # Images from the approved project are admitted without further checks.
  - name: "%[1]s/approved/*"
  # Images of these projects must carry a valid signature by the signer "release".
  - name: "%[1]s/signed/*"
    policy:
      trust:
        enabled: true
        signerSecrets:
        - name: release
  - name: "%[1]s/unsigned/*"
    policy:
      trust:
        enabled: true
        signerSecrets:
        - name: release
`, b.Registry.Host)
	signers := fmt.Sprintf(`[[signers]]
name = "release"
trust_store = %q
identities = [%q]
revocation = "skip"   # notation's test certificate names no OCSP or CRL endpoint
`, trustStore, identity)
	say("\n== starting pullguard in front of containerd, with this signer added to its node config:\n%s", signers)
	say("and this policy for namespace \"demo\":\n%s", policy)
	pg, err := b.StartPullguard(ctx, testbed.PullguardOptions{
		Config:      signers,
		PolicyFiles: map[string]string{"demo-policy.yaml": policy},
	})
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

	say("\n== 3. the pod pulls the image signed with notation; its rule requires a signature by \"release\"")
	if r := show(pg.Crictl, "pull", "--pod-config", pod, signed.Ref); r.Err != nil {
		return fmt.Errorf("the signed image was not admitted: %w", r.Err)
	}
	if len(pg.LogLines(`"verdict":"admit"`, `"pinned":"`+signed.Pinned()+`"`)) == 0 {
		return fmt.Errorf("no audit line admits %s pinned to its digest", signed.Ref)
	}
	say("-> admitted: the tag was resolved to %s, its signature verified, and the pull forwarded pinned to that digest", signed.Digest)

	say("\n== 4. the pod pulls the unsigned image under the same rule")
	r = show(pg.Crictl, "pull", "--pod-config", pod, unsigned.Ref)
	if r.Err == nil {
		return errors.New("the unsigned image was admitted")
	}
	if !strings.Contains(r.Output(), "SignatureValidationFailed: ") || !strings.Contains(r.Output(), "no valid signature from required signer(s) [release]") {
		return errors.New("the denial of the unsigned image does not say that the signer release is missing")
	}
	say("-> denied: no valid signature from the required signer")

	say("\n== 5. what containerd itself holds (asked directly, not through pullguard)")
	show(b.Crictl, "images", "--digests")
	if err := checkPinned(ctx, b, signed); err != nil {
		return err
	}
	show(b.Crictl, "inspecti", "-o", "go-template", "--template", "{{.status.repoDigests}}", signed.Ref)
	for _, denied := range []testbed.PushedImage{unapproved, unsigned} {
		has, err := b.ContainerdHasImage(ctx, denied.Ref, true)
		if err != nil {
			return err
		}
		if has {
			return fmt.Errorf("containerd holds the denied image %s", denied.Ref)
		}
	}
	say("-> the signed image is there under its tag, at the digest that was verified; the denied images never reached containerd")

	say("\n== 6. an operator asks pullguard why, without kubelet: pullguard check")
	if err := showCheck(ctx, b, say, out, pg, signed.Ref); err != nil {
		return err
	}

	say("\n== 7. pullguard's audit log: one JSON line per decision")
	for _, l := range pg.LogLines(`"event":"decision"`) {
		say("%s", l)
	}
	return nil
}

// signWithNotation does what a release pipeline does with the notation CLI: a test key and
// certificate, then a signature on img's digest pushed to the registry. It returns the trust
// store directory holding the certificate, and the identity to trust, read from the
// certificate's subject.
func signWithNotation(ctx context.Context, b *testbed.Bed, say func(string, ...any), out io.Writer, img testbed.PushedImage) (trustStore, identity string, err error) {
	n := notationCLI{bin: b.Tools.Notation, home: filepath.Join(b.Dir, "notation-home")}
	say("\n== signing %s with the notation CLI, as a release pipeline would", img.Ref)
	step := func(args ...string) error {
		say("\n$ %s", n.display(args...))
		o, err := n.run(ctx, args...)
		fmt.Fprint(out, o)
		return err
	}
	const key = "demo-release"
	if err := step("cert", "generate-test", "--default", key); err != nil {
		return "", "", err
	}
	cert, pemBytes, err := readCert(n.localCert(key))
	if err != nil {
		return "", "", err
	}
	if identity, err = subjectIdentity(cert); err != nil {
		return "", "", err
	}
	trustStore = filepath.Join(b.Dir, "truststore", "release")
	if err := os.MkdirAll(trustStore, 0o755); err != nil {
		return "", "", fmt.Errorf("create trust store: %w", err)
	}
	if err := os.WriteFile(filepath.Join(trustStore, key+".crt"), pemBytes, 0o644); err != nil {
		return "", "", fmt.Errorf("write trust store: %w", err)
	}
	say("certificate subject %q copied into the trust store %s", cert.Subject.String(), trustStore)
	// Signing the digest, not the tag: what is signed cannot move.
	if err := step("sign", "--insecure-registry", img.Pinned()); err != nil {
		return "", "", err
	}
	if err := step("ls", "--insecure-registry", img.Pinned()); err != nil {
		return "", "", err
	}
	return trustStore, identity, nil
}

// checkPinned fails unless containerd holds img under its tag and its verified digest.
func checkPinned(ctx context.Context, b *testbed.Bed, img testbed.PushedImage) error {
	for _, ref := range []string{img.Ref, img.Pinned()} {
		has, err := b.ContainerdHasImage(ctx, ref, false)
		if err != nil {
			return err
		}
		if !has {
			return fmt.Errorf("containerd does not hold %s after the admitted pull", ref)
		}
	}
	return nil
}

// showCheck runs `pullguard check` on the node config the running pullguard uses, and fails
// unless it admits.
func showCheck(ctx context.Context, b *testbed.Bed, say func(string, ...any), out io.Writer, pg *testbed.Pullguard, image string) error {
	bin, err := b.PullguardBinary(ctx)
	if err != nil {
		return err
	}
	args := []string{"check", "--config", pg.ConfigPath, "--namespace", "demo", image}
	say("\n$ pullguard %s", strings.Join(args, " "))
	o, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	fmt.Fprint(out, string(o))
	if err != nil {
		return fmt.Errorf("pullguard check %s: %w", image, err)
	}
	say("-> exit status 0: admitted")
	return nil
}

func pushTiny(ctx context.Context, b *testbed.Bed, repoTag string) (testbed.PushedImage, error) {
	img, err := testbed.TinyImage("pullguard demo " + repoTag)
	if err != nil {
		return testbed.PushedImage{}, err
	}
	return b.Registry.Push(ctx, repoTag, img)
}
