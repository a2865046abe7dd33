// Command demo shows pullguard at work on real components: a registry and containerd (with NRI
// requiring pullguard's plugin) under a temporary directory, pullguard as the CRI image service
// in front of it, crictl playing kubelet (image calls through pullguard, runtime calls straight
// to containerd). It signs images with the notation CLI, attaches signed scan reports with the
// oras CLI as a scanner's pipeline would, and shows, with how long each step took:
//
//  1. an image admitted by policy matching alone, and one no rule admits;
//  2. a signed image admitted and pulled pinned to its verified digest, an unsigned one denied;
//  3. a vulnerability denial: a signed scan report with a critical CVE;
//  4. a create-time denial inside containerd: an image pulled for a lax namespace and started in
//     a strict one (what no admission webhook sees);
//  5. a running container re-decided when a new scan report lands (`pullguard status`);
//  6. `pullguard check` explaining a decision, and the audit log.
//
// Everything is stopped at the end, also on Ctrl-C. Needs the pinned tools (`make tools-core`).
package main

import (
	"context"
	"encoding/json"
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
	"github.com/pullguard/pullguard/plugin/va/vatest"
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

// demo holds what the steps share.
type demo struct {
	ctx      context.Context
	out      io.Writer
	b        *testbed.Bed
	pg       *testbed.Pullguard
	notation notationCLI
	began    time.Time
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

// step runs one numbered part of the demo and says how long it took.
func (d *demo) step(title string, fn func() error) error {
	d.say("\n== %s", title)
	start := time.Now()
	err := fn()
	d.say("   (took %s)", time.Since(start).Round(time.Millisecond))
	return err
}

// show runs crictl with args and prints the command and its output.
func (d *demo) show(c *testbed.Crictl, args ...string) testbed.Result {
	d.say("\n$ %s", c.Display(args...))
	r := c.Run(d.ctx, args...)
	fmt.Fprint(d.out, r.Stdout, r.Stderr)
	return r
}

func run(ctx context.Context, out io.Writer) (err error) {
	d := &demo{ctx: ctx, out: out, began: time.Now()}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	var b *testbed.Bed
	if err := d.step("starting a registry and containerd (NRI on, its default validator requiring pullguard) under /tmp", func() error {
		b, err = testbed.Start(ctx, testbed.Options{Logger: logger, NRI: true})
		return err
	}); err != nil {
		return err
	}
	d.b = b
	defer func() {
		d.say("\n== stopping pullguard, pods, containerd and the registry; removing %s", b.Dir)
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if cerr := b.Close(cctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", cerr))
			return
		}
		d.say("nothing left running; the whole demo took %s", time.Since(d.began).Round(100*time.Millisecond))
	}()
	d.say("registry:   http://%s", b.Registry.Host)
	d.say("containerd: %s (NRI socket %s)", b.Containerd.Socket, b.Containerd.NRISocket)
	d.notation = notationCLI{bin: b.Tools.Notation, home: filepath.Join(b.Dir, "notation-home")}

	imgs := map[string]testbed.PushedImage{}
	var release, scanner signer
	if err := d.step("pushing images, signing some with the notation CLI, attaching signed scan reports with the oras CLI", func() error {
		for _, repo := range []string{"approved/hello:v1", "unvetted/hello:v1", "signed/hello:v1", "unsigned/hello:v1", "scanned/app:v1", "vulnerable/app:v1"} {
			img, err := testbed.RunnableImage(b.Tools.Busybox, "pullguard demo "+repo)
			if err != nil {
				return err
			}
			p, err := b.Registry.Push(ctx, repo, img)
			if err != nil {
				return err
			}
			imgs[repo] = p
			d.say("pushed %s", p.Ref)
		}
		if release, err = d.newSigner("demo-release", true); err != nil {
			return err
		}
		if scanner, err = d.newSigner("demo-scanner", false); err != nil {
			return err
		}
		for _, repo := range []string{"signed/hello:v1", "scanned/app:v1", "vulnerable/app:v1"} {
			// Signing the digest, not the tag: what is signed cannot move.
			if err := d.notationStep("sign", "--insecure-registry", imgs[repo].Pinned()); err != nil {
				return err
			}
		}
		if err := d.attachReport(imgs["scanned/app:v1"], time.Hour, medium); err != nil {
			return err
		}
		return d.attachReport(imgs["vulnerable/app:v1"], time.Hour, medium, critical)
	}); err != nil {
		return err
	}

	host := b.Registry.Host
	policy := fmt.Sprintf(`apiVersion: pullguard.dev/v1beta1
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
      trust: {enabled: true, signerSecrets: [{name: release}]}
  - name: "%[1]s/unsigned/*"
    policy:
      trust: {enabled: true, signerSecrets: [{name: release}]}
  # These must also pass vulnerability assessment on a scan report signed by "scanner".
  - name: "%[1]s/*/app"
    policy:
      trust: {enabled: true, signerSecrets: [{name: release}]}
      va: {enabled: true, maxSeverity: high}
---
# A lax namespace: anything from the demo registry, no checks.
apiVersion: pullguard.dev/v1beta1
kind: ImagePolicy
metadata:
  name: lax
  namespace: lax
spec:
  repositories:
  - name: "%[1]s/*"
`, host)
	node := fmt.Sprintf(`[[signers]]
name = "release"
trust_store = %q
identities = [%q]
revocation = "skip"   # notation's test certificates name no OCSP or CRL endpoint

[[signers]]
name = "scanner"
trust_store = %q
identities = [%q]
revocation = "skip"

[va]
# Scan reports count only when signed by a scanner signer.
scanner_signers = ["scanner"]

[running]
# Running containers' images are verified again this often (the default is 10m).
recheck_interval = "3s"
`, release.store, release.identity, scanner.store, scanner.identity)
	var pg *testbed.Pullguard
	if err := d.step("starting pullguard: the image service on its socket, its NRI plugin registered with containerd", func() error {
		d.say("node config (added to the test bed's):\n%s\npolicies:\n%s", node, policy)
		pg, err = b.StartPullguard(ctx, testbed.PullguardOptions{Config: node, PolicyFiles: map[string]string{"demo-policy.yaml": policy}})
		return err
	}); err != nil {
		return err
	}
	d.pg = pg
	d.say("pullguard:  %s (config %s)", pg.Socket, pg.ConfigPath)
	d.say("crictl plays kubelet: --image-endpoint pullguard, --runtime-endpoint containerd")

	demoPod, err := b.WritePodConfig(testbed.PodConfig{Name: "demo-pod", Namespace: "demo"})
	if err != nil {
		return err
	}
	laxPod, err := b.WritePodConfig(testbed.PodConfig{Name: "lax-pod", Namespace: "lax"})
	if err != nil {
		return err
	}

	if err := d.step(`1. pulls decided by policy: the approved project is admitted, a project no rule of namespace "demo" names is denied`, func() error {
		if r := d.show(pg.Crictl, "pull", "--pod-config", demoPod, imgs["approved/hello:v1"].Ref); r.Err != nil {
			return fmt.Errorf("the approved image was not admitted: %w", r.Err)
		}
		r := d.show(pg.Crictl, "pull", "--pod-config", demoPod, imgs["unvetted/hello:v1"].Ref)
		if r.Err == nil || !strings.Contains(r.Output(), "SignatureValidationFailed: ") {
			return errors.New("the unvetted image was not denied with SignatureValidationFailed")
		}
		d.say("-> admitted, then denied: kubelet shows the pod's reason SignatureValidationFailed (then ImagePullBackOff)")
		return nil
	}); err != nil {
		return err
	}

	if err := d.step(`2. signatures: the image signed by "release" is admitted and pulled pinned to its digest; the unsigned one is denied`, func() error {
		signed := imgs["signed/hello:v1"]
		if r := d.show(pg.Crictl, "pull", "--pod-config", demoPod, signed.Ref); r.Err != nil {
			return fmt.Errorf("the signed image was not admitted: %w", r.Err)
		}
		if len(pg.LogLines(`"verdict":"admit"`, `"pinned":"`+signed.Pinned()+`"`)) == 0 {
			return fmt.Errorf("no audit line admits %s pinned to its digest", signed.Ref)
		}
		r := d.show(pg.Crictl, "pull", "--pod-config", demoPod, imgs["unsigned/hello:v1"].Ref)
		if r.Err == nil || !strings.Contains(r.Output(), "no valid signature from required signer(s) [release]") {
			return errors.New("the unsigned image was not denied for want of the release signature")
		}
		d.say("-> the tag was resolved to %s, its signature verified, the pull pinned to that digest; the unsigned image never reached containerd", signed.Digest)
		return nil
	}); err != nil {
		return err
	}

	if err := d.step("3. vulnerability assessment on signed scan reports: a clean report admits, a critical CVE denies", func() error {
		if r := d.show(pg.Crictl, "pull", "--pod-config", demoPod, imgs["scanned/app:v1"].Ref); r.Err != nil {
			return fmt.Errorf("the image with a clean report was not admitted: %w", r.Err)
		}
		r := d.show(pg.Crictl, "pull", "--pod-config", demoPod, imgs["vulnerable/app:v1"].Ref)
		if r.Err == nil || !strings.Contains(r.Output(), critical.ID) {
			return fmt.Errorf("the vulnerable image was not denied naming %s", critical.ID)
		}
		d.say("-> denied, naming the CVE, its severity and package, the scanner and the report's age")
		return nil
	}); err != nil {
		return err
	}

	var demoPodID string
	if err := d.step(`4. inside containerd: an image pulled for namespace "lax" is started in "demo" without a pull (imagePullPolicy: IfNotPresent)`, func() error {
		if r := d.show(pg.Crictl, "pull", "--pod-config", laxPod, imgs["unvetted/hello:v1"].Ref); r.Err != nil {
			return fmt.Errorf("the lax namespace's pull: %w", r.Err)
		}
		r := d.show(b.Crictl, "runp", demoPod)
		if r.Err != nil {
			return r.Err
		}
		demoPodID = strings.TrimSpace(r.Stdout)
		ctr, err := b.WriteContainerConfig(testbed.ContainerConfig{Name: "borrowed", Image: imgs["unvetted/hello:v1"].Ref, Command: []string{"sleep", "3600"}})
		if err != nil {
			return err
		}
		r = d.show(b.Crictl, "create", demoPodID, ctr, demoPod)
		if r.Err == nil || !strings.Contains(r.Output(), `rejected container adjustment`) {
			return errors.New("the create in namespace demo was not refused by pullguard's validator")
		}
		d.say("-> containerd asked pullguard's NRI validator, which decided on the image ID containerd would run and the pod's namespace from containerd's own records; kubelet shows CreateContainerError with this message")
		return nil
	}); err != nil {
		return err
	}

	if err := d.step("5. running workloads: a container of scanned/app runs; its scanner then attaches a report with a critical CVE", func() error {
		img := imgs["scanned/app:v1"]
		ctr, err := b.WriteContainerConfig(testbed.ContainerConfig{Name: "app", Image: img.Ref, Command: []string{"sleep", "3600"}})
		if err != nil {
			return err
		}
		r := d.show(b.Crictl, "create", demoPodID, ctr, demoPod)
		if r.Err != nil {
			return fmt.Errorf("create of the admitted image: %w", r.Err)
		}
		if r := d.show(b.Crictl, "start", strings.TrimSpace(r.Stdout)); r.Err != nil {
			return r.Err
		}
		if err := d.status(); err != nil {
			return err
		}
		d.say("\nthe scanner finds %s and attaches a new signed report:", critical.ID)
		if err := d.attachReport(img, time.Minute, medium, critical); err != nil {
			return err
		}
		start := time.Now()
		for !strings.Contains(d.statusText(), "deny") {
			if time.Since(start) > time.Minute {
				return errors.New("the running container was not re-decided within a minute")
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond): // polling for the demo's output, not synchronisation
			}
		}
		d.say("re-decided %s after the report was attached:", time.Since(start).Round(100*time.Millisecond))
		_ = d.status()
		d.say("-> reported (audit line, pullguard_running_containers, status); with `running: evict` the agent evicts the pod after evictAfter")
		return nil
	}); err != nil {
		return err
	}

	if err := d.step("6. an operator asks pullguard why, without kubelet: pullguard check; then the audit log", func() error {
		if err := d.check(imgs["signed/hello:v1"].Ref); err != nil {
			return err
		}
		d.say("\npullguard's audit log: one JSON line per decision")
		for _, l := range pg.LogLines(`"event":"decision"`, `"namespace":"demo"`) {
			d.say("%s", l)
		}
		return nil
	}); err != nil {
		return err
	}
	b.Crictl.Run(ctx, "rmp", "-f", demoPodID)
	return nil
}

// signer is a notation test key and the trust store pullguard gets for it.
type signer struct{ store, identity string }

// newSigner makes a notation test key and certificate, as a pipeline's setup would, and a trust
// store holding the certificate.
func (d *demo) newSigner(key string, isDefault bool) (signer, error) {
	args := []string{"cert", "generate-test", key}
	if isDefault {
		args = append(args, "--default")
	}
	if err := d.notationStep(args...); err != nil {
		return signer{}, err
	}
	cert, pemBytes, err := readCert(d.notation.localCert(key))
	if err != nil {
		return signer{}, err
	}
	id, err := subjectIdentity(cert)
	if err != nil {
		return signer{}, err
	}
	store := filepath.Join(d.b.Dir, "truststore", key)
	if err := os.MkdirAll(store, 0o755); err != nil {
		return signer{}, fmt.Errorf("create trust store: %w", err)
	}
	if err := os.WriteFile(filepath.Join(store, key+".crt"), pemBytes, 0o644); err != nil {
		return signer{}, fmt.Errorf("write trust store: %w", err)
	}
	return signer{store: store, identity: id}, nil
}

func (d *demo) notationStep(args ...string) error {
	d.say("$ %s", d.notation.display(args...))
	o, err := d.notation.run(d.ctx, args...)
	if strings.TrimSpace(o) != "" {
		fmt.Fprint(d.out, o)
	}
	return err
}

var (
	critical = vatest.Vuln{ID: "CVE-2024-0001", Severity: "CRITICAL", Score: 9.8, Package: "openssl", Installed: "3.0.2", Fixed: "3.0.3"}
	medium   = vatest.Vuln{ID: "CVE-2024-0002", Severity: "MEDIUM", Score: 5.0, Package: "zlib", Installed: "1.2.11", Fixed: "1.2.12"}
)

// attachReport writes a SARIF scan report (as Trivy writes it) for img, attaches it to img's
// digest with the oras CLI and signs the report with the scanner's notation key.
func (d *demo) attachReport(img testbed.PushedImage, age time.Duration, vulns ...vatest.Vuln) error {
	created := time.Now().Add(-age).UTC()
	report := vatest.TrivySARIF(vatest.Scan{ScannerVersion: "0.58.1", Created: created, Image: img.Pinned(), Vulns: vulns})
	dir, err := os.MkdirTemp(d.b.Dir, "report-")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.sarif"), report, 0o644); err != nil {
		return err
	}
	args := []string{"attach", "--plain-http", "--artifact-type", "application/sarif+json",
		"--annotation", "org.opencontainers.image.created=" + created.Format(time.RFC3339),
		"--format", "json", img.Pinned(), "report.sarif:application/sarif+json"}
	d.say("$ oras %s", strings.Join(args, " "))
	cmd := exec.CommandContext(d.ctx, d.b.Tools.Oras, args...)
	cmd.Dir = dir
	o, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("oras attach: %w", err)
	}
	var attached struct {
		Digest string `json:"digest"`
	}
	if err := json.Unmarshal(o, &attached); err != nil || attached.Digest == "" {
		return fmt.Errorf("oras attach: no digest in %q: %v", o, err)
	}
	repo := img.Pinned()[:strings.LastIndex(img.Pinned(), "@")]
	return d.notationStep("sign", "--insecure-registry", "--key", "demo-scanner", repo+"@"+attached.Digest)
}

// status prints `pullguard status`.
func (d *demo) status() error {
	d.say("\n$ pullguard status --config %s", d.pg.ConfigPath)
	fmt.Fprint(d.out, d.statusText())
	return nil
}

func (d *demo) statusText() string {
	bin, err := d.b.PullguardBinary(d.ctx)
	if err != nil {
		return err.Error()
	}
	o, _ := exec.CommandContext(d.ctx, bin, "status", "--config", d.pg.ConfigPath).CombinedOutput()
	return string(o)
}

// check runs `pullguard check` on the node config the running pullguard uses, and fails
// unless it admits.
func (d *demo) check(image string) error {
	bin, err := d.b.PullguardBinary(d.ctx)
	if err != nil {
		return err
	}
	args := []string{"check", "--config", d.pg.ConfigPath, "--namespace", "demo", image}
	d.say("\n$ pullguard %s", strings.Join(args, " "))
	o, err := exec.CommandContext(d.ctx, bin, args...).CombinedOutput()
	fmt.Fprint(d.out, string(o))
	if err != nil {
		return fmt.Errorf("pullguard check %s: %w", image, err)
	}
	d.say("-> exit status 0: admitted")
	return nil
}
