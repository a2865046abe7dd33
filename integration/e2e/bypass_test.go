package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/pullguard/pullguard/integration/testbed"
	"github.com/pullguard/pullguard/plugin/trust/trusttest"
)

// The bypass catalogue (README "Security model"): one test per way an image could reach a
// container without the namespace's policy admitting it, through crictl on real containerd.
// Creates go straight to containerd, as kubelet's runtime calls do, and are decided by
// pullguard's NRI validator inside it; each denied create is checked to have left no
// container, so the denied content never ran.

// runPod starts a pod sandbox of namespace ns through pg and removes it when the test ends.
func runPod(t *testing.T, ctx context.Context, b *testbed.Bed, pg *testbed.Pullguard, name, ns string) (podID, podCfg string) {
	t.Helper()
	podCfg = podConfig(t, b, name, ns)
	r := pg.Crictl.Run(ctx, "runp", podCfg)
	if r.Err != nil {
		t.Fatalf("run pod %s/%s: %v", ns, name, r)
	}
	podID = strings.TrimSpace(r.Stdout)
	t.Cleanup(func() {
		if r := b.Crictl.Run(context.Background(), "rmp", "-f", podID); r.Err != nil {
			t.Errorf("remove pod %s: %v", podID, r)
		}
	})
	return podID, podCfg
}

// containerConfig writes a container config running sleep from image, with image volumes
// (mounts[].image) at /vol0, /vol1, ...
func containerConfig(t *testing.T, b *testbed.Bed, ctrName, image string, volumes ...string) string {
	t.Helper()
	p, err := b.WriteContainerConfig(testbed.ContainerConfig{Name: ctrName, Image: image, Command: []string{"sleep", "3600"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(volumes) == 0 {
		return p
	}
	editJSON(t, p, func(cfg map[string]any) {
		var mounts []any
		for i, v := range volumes {
			// containerd mounts image volumes read-only and refuses any other.
			mounts = append(mounts, map[string]any{"container_path": "/vol" + string(rune('0'+i)), "readonly": true, "image": map[string]any{"image": v}})
		}
		cfg["mounts"] = mounts
	})
	return p
}

// kubeletContainerConfig writes a container config the way kubelet fills the image on
// containerd: image.image is the image ID PullImage/ImageStatus returned, and
// user_specified_image the pod spec's string.
func kubeletContainerConfig(t *testing.T, b *testbed.Bed, ctrName, imageID, podSpecImage string) string {
	t.Helper()
	p := containerConfig(t, b, ctrName, imageID)
	editJSON(t, p, func(cfg map[string]any) {
		cfg["image"] = map[string]any{"image": imageID, "user_specified_image": podSpecImage}
	})
	return p
}

// editJSON rewrites the JSON object in file p with edit.
func editJSON(t *testing.T, p string, edit func(map[string]any)) {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	edit(cfg)
	if data, err = json.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// assertNoContainers checks containerd itself (crictl straight to it) has no container in pod
// other than those named in except.
func assertNoContainers(t *testing.T, ctx context.Context, b *testbed.Bed, podID string, except ...string) {
	t.Helper()
	r := b.Crictl.Run(ctx, "ps", "-a", "--pod", podID, "-o", "json")
	if r.Err != nil {
		t.Fatalf("list containers: %v", r)
	}
	var list struct {
		Containers []struct {
			ID       string `json:"id"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		} `json:"containers"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &list); err != nil {
		t.Fatalf("list containers: %v: %s", err, r.Stdout)
	}
	for _, c := range list.Containers {
		if !slices.Contains(except, c.Metadata.Name) {
			t.Errorf("containerd holds container %q (%s) in pod %s after a denied create", c.Metadata.Name, c.ID, podID)
		}
	}
}

// ctrPull pulls ref straight into containerd's CRI namespace, bypassing pullguard (an admin or a
// node image pre-loader).
func ctrPull(t *testing.T, ctx context.Context, b *testbed.Bed, ref string) {
	t.Helper()
	if r := b.Ctr(ctx, "images", "pull", "--plain-http", ref); r.Err != nil {
		t.Fatalf("ctr pull %s: %v", ref, r)
	}
	// The CRI plugin learns of the image from containerd's events: wait until it reports it.
	if !waitUntil(ctx, func() bool { return b.Crictl.Run(ctx, "inspecti", ref).Err == nil }) {
		t.Fatalf("containerd's CRI never reported %s pulled with ctr", ref)
	}
}

func TestBypassPulledForPermissiveNamespaceCreatedInStrict(t *testing.T) {
	t.Parallel()
	b := ownBed(t)
	ctx := testCtx(t)
	k := newSigningKit(t)
	host := b.Registry.Host
	img := pushRunnable(t, b, "bypass-ns/app:v1") // unsigned
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() +
		policyTOML("lax", "bypass-lax", entry{name: host + "/bypass-ns/*"}) +
		policyTOML("strict", "bypass-strict", entry{name: host + "/bypass-ns/*", trust: true, signers: []string{"release"}})})

	if r := pullIn(t, ctx, b, pg, "bypass-lax", "lax", img.Ref); r.Err != nil {
		t.Fatalf("pull for the permissive namespace: %v", r)
	}
	assertPresent(t, ctx, b, img.Ref)

	// The strict namespace starts it with imagePullPolicy: IfNotPresent: no pull, only a create,
	// however the request names the image.
	strictPod, strictCfg := runPod(t, ctx, b, pg, "strict", "bypass-strict")
	for _, cfg := range []string{
		containerConfig(t, b, "by-name", img.Ref),
		// kubelet names the image by its ID (what PullImage returned) and passes the pod's string.
		kubeletContainerConfig(t, b, "kubelet", img.ID, img.Ref),
		containerConfig(t, b, "by-id", img.ID),
	} {
		r := createDecided(t, ctx, b, strictPod, cfg, strictCfg)
		assertDenial(t, r, denialPrefix, `for namespace "bypass-strict"`, "[release]", "found no signature", img.ID)
	}
	assertNoContainers(t, ctx, b, strictPod)

	// The same create in the permissive namespace passes: the denial is the policy's.
	laxPod, laxCfg := runPod(t, ctx, b, pg, "lax", "bypass-lax")
	if r := createDecided(t, ctx, b, laxPod, containerConfig(t, b, "app", img.Ref), laxCfg); r.Err != nil {
		t.Errorf("create in the permissive namespace: %v", r)
	}
}

func TestBypassImportedIntoContainerd(t *testing.T) {
	t.Parallel()
	b := ownBed(t)
	ctx := testCtx(t)
	k := newSigningKit(t)
	host := b.Registry.Host
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() +
		policyTOML("strict", "bypass-imp", entry{name: host + "/bypass-imp/*", trust: true, signers: []string{"release"}})})
	pod, podCfg := runPod(t, ctx, b, pg, "imp", "bypass-imp")

	t.Run("ctr pull of an unsigned image", func(t *testing.T) {
		ctx := testCtx(t)
		img := pushRunnable(t, b, "bypass-imp/unsigned:v1")
		ctrPull(t, ctx, b, img.Ref)
		r := createDecided(t, ctx, b, pod, containerConfig(t, b, "unsigned", img.Ref), podCfg)
		assertDenial(t, r, denialPrefix, `for namespace "bypass-imp"`, img.Digest, "found no signature")
	})
	t.Run("ctr import of an image no registry holds", func(t *testing.T) {
		ctx := testCtx(t)
		ref := host + "/bypass-imp/ghost:v1"
		img, err := testbed.RunnableImage(b.Tools.Busybox, t.Name())
		if err != nil {
			t.Fatal(err)
		}
		tag, err := name.NewTag(ref, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		tarPath := filepath.Join(t.TempDir(), "ghost.tar")
		if err := tarball.WriteToFile(tarPath, tag, img); err != nil {
			t.Fatal(err)
		}
		if r := b.Ctr(ctx, "images", "import", tarPath); r.Err != nil {
			t.Fatalf("ctr import: %v", r)
		}
		if !waitUntil(ctx, func() bool { return b.Crictl.Run(ctx, "inspecti", ref).Err == nil }) {
			t.Fatalf("containerd's CRI never reported the imported %s", ref)
		}
		r := createDecided(t, ctx, b, pod, containerConfig(t, b, "ghost", ref), podCfg)
		assertDenial(t, r, denialPrefix, `for namespace "bypass-imp"`, "bypass-imp/ghost", "the registry does not hold", "loaded or re-tagged on this node")
	})
	t.Run("ctr import of unsigned content under a signed image's name", func(t *testing.T) {
		// The registry holds a signed image under the name; the node holds other content
		// under it. What the node would run is what must be decided on.
		ctx := testCtx(t)
		signed := pushRunnable(t, b, "bypass-imp/impostor:v1")
		sign(t, signed, k.releaseLeaf, trusttest.JWS, nil)
		evil, err := testbed.RunnableImage(b.Tools.Busybox, t.Name()+" evil")
		if err != nil {
			t.Fatal(err)
		}
		tag, err := name.NewTag(signed.Ref, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		tarPath := filepath.Join(t.TempDir(), "impostor.tar")
		if err := tarball.WriteToFile(tarPath, tag, evil); err != nil {
			t.Fatal(err)
		}
		evilID, err := evil.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		if r := b.Ctr(ctx, "images", "import", tarPath); r.Err != nil {
			t.Fatalf("ctr import: %v", r)
		}
		if !waitUntil(ctx, func() bool {
			r := b.Crictl.Run(ctx, "inspecti", "-o", "go-template", "--template", "{{.status.id}}", signed.Ref)
			return r.Err == nil && strings.Contains(r.Stdout, evilID.String())
		}) {
			t.Fatalf("containerd's CRI never reported the imported %s as %s", signed.Ref, evilID)
		}
		r := createDecided(t, ctx, b, pod, kubeletContainerConfig(t, b, "impostor", evilID.String(), signed.Ref), podCfg)
		assertDenial(t, r, denialPrefix, `for namespace "bypass-imp"`, "bypass-imp/impostor", evilID.String())
	})
	t.Run("ctr pull of a signed image verifies at create", func(t *testing.T) {
		ctx := testCtx(t)
		img := pushRunnable(t, b, "bypass-imp/signed:v1")
		sign(t, img, k.releaseLeaf, trusttest.JWS, nil)
		ctrPull(t, ctx, b, img.Ref)
		r := createDecided(t, ctx, b, pod, containerConfig(t, b, "signed", img.Ref), podCfg)
		if r.Err != nil {
			t.Fatalf("create of a pre-loaded image whose digest verifies: %v", r)
		}
		if lines := pg.LogLines(`"op":"create"`, img.Digest, "admit"); len(lines) == 0 {
			t.Errorf("no create-time admission of %s in the audit log", img.Digest)
		}
	})
	// Only the signed image's container exists.
	assertNoContainers(t, ctx, b, pod, "signed")
}

func TestBypassPullByDigestOfUnsignedImage(t *testing.T) {
	t.Parallel()
	b := sharedBed(t)
	ctx := testCtx(t)
	k := newSigningKit(t)
	unsigned := pushTiny(t, b, "bypass-digest/unsigned:v1")
	signed := pushTiny(t, b, "bypass-digest/signed:v1")
	sign(t, signed, k.releaseLeaf, trusttest.JWS, nil)
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() +
		policyTOML("strict", "bypass-digest", entry{name: b.Registry.Host + "/bypass-digest/*", trust: true, signers: []string{"release"}})})

	assertDenial(t, pullIn(t, ctx, b, pg, "bypass-digest", "dig", unsigned.Pinned()), denialPrefix, unsigned.Digest, "found no signature")
	assertDeniedPullLeftNothing(t, ctx, b, unsigned)

	if r := pullIn(t, ctx, b, pg, "bypass-digest", "dig", signed.Pinned()); r.Err != nil {
		t.Fatalf("pull by digest of a signed image: %v", r)
	}
	assertPresent(t, ctx, b, signed.Pinned())
}

// TestBypassHostInPath: a trusted host's name inside the path of another registry's repository
// must not match the trusted host's pattern.
func TestBypassHostInPath(t *testing.T) {
	t.Parallel()
	b := sharedBed(t)
	ctx := testCtx(t)
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: policyTOML("hosts", "bypass-host", entry{name: "trusted.example.com/*"})})
	// The bed's registry serves a repository named after the trusted host.
	img := pushTiny(t, b, "trusted.example.com/app:v1")
	assertDenial(t, pullIn(t, ctx, b, pg, "bypass-host", "hp", img.Ref), denialPrefix, "no repository", `for namespace "bypass-host"`)
	assertDeniedPullLeftNothing(t, ctx, b, img)
	// Denied before any network access: the name alone decides.
	r := pullIn(t, ctx, b, pg, "bypass-host", "hp", "evil.example.org/trusted.example.com/app:v1")
	assertDenial(t, r, denialPrefix, "no repository", `image "evil.example.org/trusted.example.com/app:v1"`)
	// The trusted host itself is admitted by its pattern (decided offline with `pullguard check`).
	if out, code := pullguardCheck(t, ctx, b, pg, "bypass-host", "trusted.example.com/app:v1"); code != 0 {
		t.Errorf("trusted.example.com/app:v1 should be admitted by trusted.example.com/*: exit %d\n%s", code, out)
	}
}

// pullguardCheck runs `pullguard check` with pg's config; it returns the output and exit code.
func pullguardCheck(t *testing.T, ctx context.Context, b *testbed.Bed, pg *testbed.Pullguard, ns, image string) (string, int) {
	t.Helper()
	bin, err := b.PullguardBinary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bin, "check", "--config", pg.ConfigPath, "--namespace", ns, image)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatalf("pullguard check: %v\n%s", err, out)
	}
	return string(out), 0
}

// TestBypassNameVariants: every spelling of one Docker Hub image is normalised before matching,
// so all are decided alike. Docker Hub is not reachable here, so the admitting side is decided
// with `pullguard check` (a rule without checks needs no network) and the denying side with
// crictl pulls that pullguard refuses before any network access.
func TestBypassNameVariants(t *testing.T) {
	t.Parallel()
	b := sharedBed(t)
	ctx := testCtx(t)
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: policyTOML("ok", "names-ok", entry{name: "docker.io/library/nginx"}) +
		policyTOML("deny", "names-deny", entry{name: "docker.io/library/other"})})
	const dig = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	variants := []string{
		"nginx", "nginx:latest", "library/nginx", "docker.io/nginx", "docker.io/library/nginx",
		"docker.io/library/nginx:latest", "index.docker.io/library/nginx:latest", "nginx@" + dig, "nginx:latest@" + dig,
	}
	for _, v := range variants {
		out, code := pullguardCheck(t, ctx, b, pg, "names-ok", v)
		if code != 0 || !strings.Contains(out, "docker.io/library/nginx") {
			t.Errorf("check %q in names-ok: exit %d, want 0 naming docker.io/library/nginx:\n%s", v, code, out)
		}
		out, code = pullguardCheck(t, ctx, b, pg, "names-deny", v)
		if code != 1 || !strings.Contains(out, "docker.io/library/nginx") {
			t.Errorf("check %q in names-deny: exit %d, want 1 naming docker.io/library/nginx:\n%s", v, code, out)
		}
		r := pullIn(t, ctx, b, pg, "names-deny", "nv", v)
		assertDenial(t, r, denialPrefix, `image "docker.io/library/nginx`, `for namespace "names-deny"`)
	}
	// Upper case is not a valid repository name: refused everywhere, even where the lower-case
	// spelling is admitted.
	for _, v := range []string{"NGINX", "docker.io/library/Nginx:latest"} {
		if out, code := pullguardCheck(t, ctx, b, pg, "names-ok", v); code == 0 {
			t.Errorf("check %q admitted:\n%s", v, out)
		}
		r := pullIn(t, ctx, b, pg, "names-ok", "nv", v)
		assertDenial(t, r, "InvalidImage")
	}
}

func TestBypassImageVolumeMount(t *testing.T) {
	t.Parallel()
	b := ownBed(t)
	ctx := testCtx(t)
	k := newSigningKit(t)
	host := b.Registry.Host
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() + policyTOML("vol", "bypass-vol",
		entry{name: host + "/testbed/*"},
		entry{name: host + "/bypass-vol/*", trust: true, signers: []string{"release"}})})
	data := pushTiny(t, b, "bypass-vol/data:v1") // unsigned
	ctrPull(t, ctx, b, data.Ref)                 // on the node already, e.g. pre-loaded
	signedData := pushTiny(t, b, "bypass-vol/signed:v1")
	sign(t, signedData, k.releaseLeaf, trusttest.JWS, nil)
	if r := pullIn(t, ctx, b, pg, "bypass-vol", "vol", b.Busybox.Ref); r.Err != nil {
		t.Fatalf("pull the container's own image: %v", r)
	}
	if r := pullIn(t, ctx, b, pg, "bypass-vol", "vol", signedData.Ref); r.Err != nil {
		t.Fatalf("pull the signed volume image: %v", r)
	}
	pod, podCfg := runPod(t, ctx, b, pg, "vol", "bypass-vol")

	// The volume is decided by the digest containerd mounts it from, whatever the request says.
	for i, ref := range []string{data.Ref, data.ID} {
		r := createDecided(t, ctx, b, pod, containerConfig(t, b, fmt.Sprintf("withvol%d", i), b.Busybox.Ref, ref), podCfg)
		assertDenial(t, r, denialPrefix, "image volume at /vol0", "bypass-vol/data", `for namespace "bypass-vol"`, "found no signature")
	}
	assertNoContainers(t, ctx, b, pod)
	if r := createDecided(t, ctx, b, pod, containerConfig(t, b, "signedvol", b.Busybox.Ref, signedData.Ref), podCfg); r.Err != nil {
		t.Errorf("the container with a signed image volume: %v", r)
	}
	if r := createDecided(t, ctx, b, pod, containerConfig(t, b, "novol", b.Busybox.Ref), podCfg); r.Err != nil {
		t.Errorf("the same container without the image volume: %v", r)
	}
	assertNoContainers(t, ctx, b, pod, "signedvol", "novol")
}

func TestBypassPullWithoutSandboxConfig(t *testing.T) {
	t.Parallel()
	b := sharedBed(t)
	ctx := testCtx(t)
	k := newSigningKit(t)
	host := b.Registry.Host
	img := pushTiny(t, b, "bypass-nosb/app:v1") // unsigned
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() +
		policyTOML("cluster", "", entry{name: host + "/bypass-nosb/*", trust: true, signers: []string{"release"}}) +
		policyTOML("lax", "bypass-nosb-lax", entry{name: host + "/bypass-nosb/*"})})
	r := pg.Crictl.Run(ctx, "pull", img.Ref)
	assertDenial(t, r, denialPrefix, "for the cluster policy", "found no signature")
	assertDeniedPullLeftNothing(t, ctx, b, img)
	if r := pullIn(t, ctx, b, pg, "bypass-nosb-lax", "nosb", img.Ref); r.Err != nil {
		t.Errorf("the permissive namespace's pull (control): %v", r)
	}
}

// TestBypassTagMovedAfterVerification: the tag is moved to an unsigned image right after
// pullguard resolved it (a registry front that swaps the tag after serving it). The pull lands
// the verified digest under the tag; the unsigned image never reaches containerd.
func TestBypassTagMovedAfterVerification(t *testing.T) {
	t.Parallel()
	b := sharedBed(t)
	ctx := testCtx(t)
	k := newSigningKit(t)
	signed := pushTiny(t, b, "bypass-swap/app:v1")
	sign(t, signed, k.releaseLeaf, trusttest.JWS, nil)
	evil := pushTiny(t, b, "bypass-swap/app:staging") // unsigned, same repository
	repo := repoClient(t, signed.Ref, nil)
	evilDesc := describe(t, repo, evil)
	proxy := testbed.StartTagSwapProxy(b.Registry.Host, "bypass-swap/app", "v1", func(ctx context.Context) error {
		return repo.Tag(ctx, evilDesc, "v1")
	})
	t.Cleanup(proxy.Close)
	if err := b.AllowPlainHTTP(proxy.Host); err != nil {
		t.Fatal(err)
	}
	ref := proxy.Host + "/bypass-swap/app:v1"
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() +
		policyTOML("swap", "bypass-swap", entry{name: proxy.Host + "/bypass-swap/*", trust: true, signers: []string{"release"}})})
	defer func() {
		if t.Failed() {
			t.Logf("requests the registry front served:\n%s", strings.Join(proxy.Requests(), "\n"))
		}
	}()

	r := pullIn(t, ctx, b, pg, "bypass-swap", "swap", ref)
	if r.Err != nil {
		t.Fatalf("pull of the signed tag: %v", r)
	}
	if swapped, err := proxy.Swapped(); !swapped || err != nil {
		t.Fatalf("the tag was not moved during the pull (swapped %v, err %v)", swapped, err)
	}
	// Once the tag had moved, nobody asked the registry for it again: containerd fetched the
	// verified digest.
	served := proxy.Requests()
	t.Logf("requests the registry front served during the pull:\n%s", strings.Join(served, "\n"))
	moved := false
	fetchedPinned := false
	for _, req := range served {
		switch {
		case req == "(tag moved)":
			moved = true
		case moved && strings.HasSuffix(req, "/manifests/v1"):
			t.Errorf("the moved tag was fetched after the swap (%s): the pull was not pinned", req)
		case moved && strings.HasSuffix(req, "/manifests/"+signed.Digest):
			fetchedPinned = true
		}
	}
	if !fetchedPinned {
		t.Errorf("containerd never fetched the verified manifest %s by digest after the swap", signed.Digest)
	}
	// The attack happened: the registry now serves the unsigned image under the tag.
	if d, err := repo.Resolve(ctx, "v1"); err != nil || d.Digest.String() != evil.Digest {
		t.Fatalf("registry tag v1 after the swap: %v %v, want %s", d.Digest, err, evil.Digest)
	}
	// containerd holds the tag at the verified digest, and the unsigned content nowhere.
	ls := b.Ctr(ctx, "images", "ls")
	found := false
	for _, line := range strings.Split(ls.Stdout, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == ref {
			found = true
			if f[2] != signed.Digest {
				t.Errorf("containerd's %s points at %s, want the verified %s", ref, f[2], signed.Digest)
			}
		}
	}
	if !found {
		t.Errorf("containerd lacks %s after the admitted pull:\n%s", ref, ls.Stdout)
	}
	assertDigestAbsent(t, ctx, b, evil.Digest)
	if res := pg.Crictl.Run(ctx, "inspecti", "-o", "go-template", "--template", "{{.status.id}}", ref); res.Err != nil || !strings.Contains(res.Stdout, signed.ID) {
		t.Errorf("image status of %s through pullguard: want the verified image %s: %v", ref, signed.ID, res)
	}
	// The next pull of the moved tag is decided on what the tag now names: denied, and the
	// node keeps the verified image under the tag.
	assertDenial(t, pullIn(t, ctx, b, pg, "bypass-swap", "swap", ref), denialPrefix, evil.Digest, "found no signature")
	assertDigestAbsent(t, ctx, b, evil.Digest)
}

// TestBypassLocalTagRepointed: the verified tag is re-pointed inside containerd (ctr images tag
// --force, as someone with access to containerd could) to an unsigned image. A create by that
// tag is decided on the digest the node now holds under it, not on the earlier verdict.
func TestBypassLocalTagRepointed(t *testing.T) {
	t.Parallel()
	b := ownBed(t)
	ctx := testCtx(t)
	k := newSigningKit(t)
	host := b.Registry.Host
	signed := pushRunnable(t, b, "bypass-retag/app:v1")
	sign(t, signed, k.releaseLeaf, trusttest.JWS, nil)
	evil := pushRunnable(t, b, "bypass-retag/evil:v1")
	pg := startPullguard(t, b, testbed.PullguardOptions{Config: k.configTOML() +
		policyTOML("strict", "bypass-retag", entry{name: host + "/bypass-retag/*", trust: true, signers: []string{"release"}})})
	if r := pullIn(t, ctx, b, pg, "bypass-retag", "rt", signed.Ref); r.Err != nil {
		t.Fatalf("pull of the signed image: %v", r)
	}
	pod, podCfg := runPod(t, ctx, b, pg, "rt", "bypass-retag")
	// Admitted at create while the tag names the signed image: verified at pull time.
	if r := b.Crictl.Run(ctx, "create", pod, containerConfig(t, b, "before", signed.Ref), podCfg); r.Err != nil {
		t.Fatalf("create of the verified image: %v", r)
	}
	ctrPull(t, ctx, b, evil.Ref)
	// Both the tag and the record the pinned pull made (repo@digest) are re-pointed: a pod
	// pinned to the signed digest is no safer than one naming the tag.
	for _, name := range []string{signed.Ref, signed.Pinned()} {
		if r := b.Ctr(ctx, "images", "tag", "--force", evil.Ref, name); r.Err != nil {
			t.Fatalf("re-point %s in containerd: %v", name, r)
		}
		if !waitUntil(ctx, func() bool {
			r := b.Crictl.Run(ctx, "inspecti", "-o", "go-template", "--template", "{{.status.id}}", name)
			return r.Err == nil && strings.Contains(r.Stdout, evil.ID)
		}) {
			t.Fatalf("containerd's CRI never saw %s re-pointed to %s", name, evil.ID)
		}
	}
	for _, cfg := range []string{
		containerConfig(t, b, "by-tag", signed.Ref),
		// The honest kubelet flow for a pod whose spec pins the signed digest.
		kubeletContainerConfig(t, b, "by-pinned", signed.Pinned(), signed.Pinned()),
	} {
		r := createDecided(t, ctx, b, pod, cfg, podCfg)
		assertDenial(t, r, denialPrefix, `for namespace "bypass-retag"`, evil.ID)
	}
	assertNoContainers(t, ctx, b, pod, "before")
}
