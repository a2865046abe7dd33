package node

import (
	"bytes"
	"context"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/pullguard/pullguard/integration/kube"
	"github.com/pullguard/pullguard/integration/testbed"
	"github.com/pullguard/pullguard/plugin/trust/trusttest"
)

const pgNamespace = "pullguard-system"

// e2e is one bed with pullguard's images, a release signer and a copy of daemonset/, shared by
// the steps of TestPullguardOnNode, which run in order: each leaves the node as the next
// expects it.
type e2e struct {
	t        *testing.T
	ctx      context.Context
	b        *Bed
	m        *Manifests
	ca       *trusttest.CA
	signed   testbed.PushedImage
	unsigned testbed.PushedImage
	prepull  testbed.PushedImage
	team     testbed.PushedImage
	// binaries of the two pullguard images (v1 installed, v2 the upgrade)
	bin map[string]string
	// the node's files install changes, as they were before it
	before map[string][]byte
	// a pod that runs from before the upgrade until the uninstall
	longRunning *corev1.Pod
	listenPorts []int // free loopback ports for the DaemonSet's listeners
}

// TestPullguardOnNode installs pullguard on a real node through its DaemonSet, then checks what
// a cluster user sees, the operations on the node (upgrade, a killed daemon) and the
// uninstall, and that the bed leaves nothing behind.
func TestPullguardOnNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	b := startBed(t, ctx)
	e := &e2e{t: t, ctx: ctx, b: b, bin: map[string]string{}}
	e.setUp()

	steps := []struct {
		name string
		run  func(t *testing.T)
		// must: the following steps make no sense without it
		must bool
	}{
		{"install", e.install, true},
		{"signed image runs", e.signedRuns, false},
		{"unsigned image refused at pull", e.unsignedRefused, false},
		{"pre-pulled image refused at create", e.prepulledRefused, false},
		{"ImagePolicy changes the next decision", e.imagePolicyApplies, false},
		{"broken ConfigMap rejected", e.brokenConfigRejected, false},
		{"upgrade", e.upgrade, true},
		{"killed daemon restarted, creates refused meanwhile", e.killed, false},
		{"uninstall", e.uninstall, true},
	}
	for _, s := range steps {
		start := time.Now()
		ok := t.Run(s.name, s.run)
		t.Logf("step %q: %s", s.name, time.Since(start).Round(100*time.Millisecond))
		if !ok && s.must {
			t.Fatalf("step %q failed: the rest depends on it", s.name)
		}
	}
	closeAndCheckClean(t, ctx, b)
}

// setUp pushes the workload images (one signed by the release signer), builds and pushes
// pullguard's image with `make image`, and prepares the manifests as an admin would.
func (e *e2e) setUp() {
	t, b := e.t, e.b
	e.ca = trusttest.NewCA(t, "release root")
	leaf := e.ca.Leaf(t, pkix.Name{Country: []string{"US"}, Province: []string{"WA"}, Organization: []string{"Example"}, CommonName: "release"})
	push := func(repoTag string) testbed.PushedImage {
		img, err := testbed.RunnableImage(b.Tools.Testbed.Busybox, repoTag)
		if err != nil {
			t.Fatal(err)
		}
		p, err := b.Registry.Push(e.ctx, repoTag, img)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	e.signed, e.unsigned, e.prepull, e.team = push("apps/signed:1"), push("apps/unsigned:1"), push("apps/prepulled:1"), push("apps/team:1")
	repo, err := testbed.RepoClient(b.Registry.Host, "apps/signed", nil)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := repo.Resolve(e.ctx, e.signed.Digest)
	if err != nil {
		t.Fatal(err)
	}
	trusttest.Sign(t, repo, desc, leaf, trusttest.JWS)

	start := time.Now()
	for _, v := range []string{"v1", "v2"} {
		dir := filepath.Join(b.Dir, "bin-"+v)
		pushed, err := MakeImage(e.ctx, b.Tools.Repo, b.Registry.Host+"/pullguard:"+v, dir, "node-test-"+v)
		if err != nil {
			t.Fatal(err)
		}
		e.bin[v] = filepath.Join(dir, "pullguard")
		t.Logf("make image: %s", pushed)
	}
	t.Logf("two pullguard images built and pushed in %s", time.Since(start).Round(time.Millisecond))

	if e.m, err = CopyManifests(b.Tools.Repo, filepath.Join(b.Dir, "deploy")); err != nil {
		t.Fatal(err)
	}
	ports, err := freePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	e.listenPorts = ports[1:]
	for _, err := range []error{
		e.m.SetImage("pullguard", b.Registry.Host+"/pullguard", "v1"),
		e.m.AddComponent("policy-sync"),
		e.m.WriteFile("node/config.toml", e.nodeConfig(ports[0])),
		e.m.WriteFile("policies/00-cluster-default.yaml", e.clusterPolicy()),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	e.before = map[string][]byte{}
	for _, f := range []string{KubeadmFlags, KubeletConfig, ContainerdConfig} {
		data, err := os.ReadFile(b.Node.Path(f))
		if err != nil {
			t.Fatal(err)
		}
		e.before[f] = data
	}
}

// nodeConfig is the shipped node/config.toml with the release signer added (its certificate
// comes from the pullguard-truststore ConfigMap). A TCP metrics address it may set moves to a
// free port: the node shares the machine's network.
func (e *e2e) nodeConfig(metricsPort int) string {
	data, err := os.ReadFile(filepath.Join(e.b.Tools.Repo, "daemonset/node/config.toml"))
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := metricsAddress.ReplaceAllString(string(data), fmt.Sprintf(`${1}"127.0.0.1:%d"`, metricsPort))
	return cfg + `
[[signers]]
name = "release"
trust_store = "/etc/pullguard/truststore/release"
identities = ["x509.subject: C=US, ST=WA, O=Example, CN=release"]
# The test certificates name no OCSP or CRL service.
revocation = "skip"
`
}

// metricsAddress is a non-empty address key of the config's [metrics] table.
var metricsAddress = regexp.MustCompile(`(?m)(\[metrics\](?:\n[^\[].*)*?\naddress\s*=\s*)"[^"]+"`)

// clusterPolicy replaces the shipped cluster default: every image signed by release, except
// the sandbox image the node's containerd runs.
func (e *e2e) clusterPolicy() string {
	return fmt.Sprintf(`apiVersion: pullguard.dev/v1beta1
kind: ClusterImagePolicy
metadata:
  name: node-test-default
spec:
  repositories:
  - name: "*"
    policy:
      trust:
        enabled: true
        signerSecrets:
        - name: release
  - name: "%s/testbed/pause"
    policy:
`, e.b.Registry.Host)
}

// apply builds the manifests, adapts the DaemonSet to the host-network node and applies
// everything, as `kubectl apply -k` does.
func (e *e2e) apply() error {
	objs, err := e.m.Build()
	if err != nil {
		return err
	}
	host, port, err := hostPort(e.b.Cluster.URL)
	if err != nil {
		return err
	}
	if err := ForHostNetworkNode(objs, host, port, e.listenPorts); err != nil {
		return err
	}
	rc, err := e.b.Cluster.Config(kube.AdminUser)
	if err != nil {
		return err
	}
	return kube.Apply(e.ctx, rc, objs)
}

func (e *e2e) install(t *testing.T) {
	cs := e.b.Cluster.Admin
	// The namespace first, then the signers' certificates as the README says to create them,
	// then everything: the pod must find the trust store when it starts.
	if _, err := cs.CoreV1().Namespaces().Create(e.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: pgNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ConfigMaps(pgNamespace).Create(e.ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "pullguard-truststore"},
		Data:       map[string]string{"release.pem": string(e.ca.PEM())},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := e.apply(); err != nil {
		t.Fatal(err)
	}
	pod, err := e.waitDaemonPod(4*time.Minute, func(p *corev1.Pod) bool { return containerImage(p, "sync") == e.b.Registry.Host+"/pullguard:v1" })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("DaemonSet pod %s Ready %s after apply", pod.Name, time.Since(start).Round(time.Millisecond))
	if log, err := e.b.podLog(pod, "install"); err != nil {
		t.Error(err)
	} else {
		t.Logf("install log:\n%s", log)
	}
	if err := e.b.WaitNodeReady(e.ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	n := e.b.Node
	if state, err := n.UnitProperty(e.ctx, "pullguard", "ActiveState"); err != nil || state != "active" {
		t.Errorf("pullguard.service %q (%v)", state, err)
	}
	flags, err := os.ReadFile(n.Path(KubeadmFlags))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(flags), "--image-service-endpoint=unix:///run/pullguard/pullguard.sock") ||
		!strings.Contains(string(flags), "--container-runtime-endpoint=unix://"+ContainerdSocket) {
		t.Errorf("kubelet's image service not on pullguard, or its runtime not on containerd: %s", flags)
	}
	if _, err := os.Stat(n.Path(filepath.Join(ContainerdDropInDir, "99-pullguard-nri.toml"))); err != nil {
		t.Errorf("containerd's NRI drop-in: %v", err)
	}
}

// waitDaemonPod waits until the DaemonSet's pod on the node passes match and is Ready (its
// install container done); an install container that failed ends the wait with its log.
func (e *e2e) waitDaemonPod(timeout time.Duration, match func(*corev1.Pod) bool) (*corev1.Pod, error) {
	var found *corev1.Pod
	err := poll(e.ctx, timeout, "the DaemonSet's pod Ready on the node", func(ctx context.Context) error {
		pods, err := e.b.Cluster.Admin.CoreV1().Pods(pgNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=pullguard"})
		if err != nil {
			return err
		}
		var seen []string
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.DeletionTimestamp != nil || !match(p) {
				seen = append(seen, p.Name+" (not it)")
				continue
			}
			for _, s := range p.Status.InitContainerStatuses {
				if t := s.State.Terminated; t != nil && t.ExitCode != 0 || s.LastTerminationState.Terminated != nil {
					log, _ := e.b.podLog(p, s.Name)
					return fmt.Errorf("%w: %s of %s failed: %s\n%s", errStop, s.Name, p.Name, describeState(s.State), log)
				}
			}
			if podReady(p) {
				found = p
				return nil
			}
			seen = append(seen, fmt.Sprintf("%s %s %s", p.Name, p.Status.Phase, containerStates(p)))
		}
		return fmt.Errorf("pods: %v", seen)
	})
	return found, err
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func containerStates(p *corev1.Pod) string {
	var s []string
	for _, c := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		s = append(s, c.Name+": "+describeState(c.State))
	}
	return strings.Join(s, "; ")
}

func containerImage(p *corev1.Pod, name string) string {
	for _, c := range p.Spec.Containers {
		if c.Name == name {
			return c.Image
		}
	}
	return ""
}

func (e *e2e) namespace(name string) {
	_, err := e.b.Cluster.Admin.CoreV1().Namespaces().Create(e.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		e.t.Fatal(err)
	}
	// The ServiceAccount admission plugin refuses pods until the controllers made the
	// namespace's default service account.
	if err := poll(e.ctx, time.Minute, "default service account in "+name, func(ctx context.Context) error {
		_, err := e.b.Cluster.Admin.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
}

// deployment creates a one-replica host-network Deployment and returns its pod once one
// exists.
func (e *e2e) deployment(t *testing.T, ns, name, image string, policy corev1.PullPolicy) *corev1.Pod {
	e.namespace(ns)
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					HostNetwork:                   true,
					TerminationGracePeriodSeconds: ptr(int64(1)),
					Containers: []corev1.Container{{
						Name: "main", Image: image, ImagePullPolicy: policy,
						Command: []string{"sh", "-c", "echo started " + name + "; exec sleep 3600"},
					}},
				},
			},
		},
	}
	if _, err := e.b.Cluster.Admin.AppsV1().Deployments(ns).Create(e.ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pod *corev1.Pod
	if err := poll(e.ctx, time.Minute, "a pod of Deployment "+ns+"/"+name, func(ctx context.Context) error {
		pods, err := e.b.Cluster.Admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return err
		}
		if len(pods.Items) == 0 {
			return errors.New("none yet")
		}
		pod = &pods.Items[0]
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return pod
}

// waiting waits until the pod's container waits for one of reasons with a message (in its
// status or in the pod's events) containing every want; it returns what it saw.
func (e *e2e) waiting(t *testing.T, pod *corev1.Pod, timeout time.Duration, reasons []string, wants ...string) string {
	t.Helper()
	var saw string
	_, err := waitPod(e.ctx, e.b.Cluster.Admin, pod.Namespace, pod.Name, timeout, fmt.Sprintf("waiting %v with %q", reasons, wants), func(p *corev1.Pod) error {
		if err := running(p); err == nil {
			return fmt.Errorf("%w: it runs", errStop)
		}
		var w *corev1.ContainerStateWaiting
		for _, s := range p.Status.ContainerStatuses {
			w = s.State.Waiting
		}
		if w == nil || !slices.Contains(reasons, w.Reason) {
			return fmt.Errorf("state: %s", containerStates(p))
		}
		text := w.Reason + ": " + w.Message
		evs, err := e.b.Cluster.Admin.CoreV1().Events(p.Namespace).List(e.ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + p.Name})
		if err != nil {
			return err
		}
		for _, ev := range evs.Items {
			text += "\nevent " + ev.Reason + ": " + ev.Message
		}
		saw = text
		for _, want := range wants {
			if !strings.Contains(text, want) {
				return fmt.Errorf("no %q in %s", want, text)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return saw
}

func (e *e2e) signedRuns(t *testing.T) {
	start := time.Now()
	pod := e.deployment(t, "apps", "signed", e.signed.Ref, corev1.PullAlways)
	pod, err := waitPod(e.ctx, e.b.Cluster.Admin, pod.Namespace, pod.Name, 2*time.Minute, "running", running)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("signed Deployment's pod running %s after create", time.Since(start).Round(time.Millisecond))
	e.longRunning = pod
}

func (e *e2e) unsignedRefused(t *testing.T) {
	pod := e.deployment(t, "apps", "unsigned", e.unsigned.Ref, corev1.PullAlways)
	saw := e.waiting(t, pod, 2*time.Minute, []string{"SignatureValidationFailed", "ErrImagePull", "ImagePullBackOff"},
		"SignatureValidationFailed", `pullguard denied image "`+e.unsigned.Ref+`" for namespace "apps"`)
	t.Logf("a user sees:\n%s", saw)
}

func (e *e2e) prepulledRefused(t *testing.T) {
	// An admin's pre-pull straight into containerd, past kubelet and pullguard.
	if r := e.b.Node.Exec(e.ctx, "ctr", "--namespace", "k8s.io", "images", "pull", "--plain-http", e.prepull.Ref); r.Err != nil {
		t.Fatalf("pre-pull on the node: %s", r)
	}
	pod := e.deployment(t, "strict", "prepulled", e.prepull.Ref, corev1.PullIfNotPresent)
	// pullguard verifies the image in the background on the first create; kubelet's retry
	// gets the finding.
	saw := e.waiting(t, pod, 3*time.Minute, []string{"CreateContainerError"},
		`validator "10-pullguard" rejected container adjustment`, `for namespace "strict"`, "found no signature")
	t.Logf("a user sees:\n%s", saw)
	evs, err := e.b.Cluster.Admin.CoreV1().Events("strict").List(e.ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod.Name + ",reason=Pulling"})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs.Items) > 0 {
		t.Errorf("kubelet pulled the pre-pulled image (IfNotPresent): %s", evs.Items[0].Message)
	}
}

var imagePolicies = schema.GroupVersionResource{Group: "pullguard.dev", Version: "v1beta1", Resource: "imagepolicies"}

func (e *e2e) imagePolicyApplies(t *testing.T) {
	// Refused while the cluster policy decides for the namespace.
	before := e.deployment(t, "team", "before", e.team.Ref, corev1.PullAlways)
	e.waiting(t, before, 2*time.Minute, []string{"SignatureValidationFailed", "ErrImagePull", "ImagePullBackOff"}, "SignatureValidationFailed")

	dyn, err := dynamic.NewForConfig(e.cfg(t))
	if err != nil {
		t.Fatal(err)
	}
	policy := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "pullguard.dev/v1beta1", "kind": "ImagePolicy",
		"metadata": map[string]any{"name": "team-tools", "namespace": "team"},
		"spec": map[string]any{"repositories": []any{
			map[string]any{"name": e.b.Registry.Host + "/apps/team", "policy": map[string]any{}},
		}},
	}}
	start := time.Now()
	if _, err := dyn.Resource(imagePolicies).Namespace("team").Create(e.ctx, policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The policy-sync agent renders it on the node and reports it on the object.
	rendered := e.b.Node.Path("/etc/pullguard/crd-policies/ImagePolicy_team.yaml")
	if err := poll(e.ctx, time.Minute, "ImagePolicy team/team-tools rendered on the node", func(context.Context) error {
		data, err := os.ReadFile(rendered)
		if err != nil {
			return err
		}
		if !strings.Contains(string(data), "team-tools") {
			return fmt.Errorf("%s: %s", rendered, data)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("rendered on the node %s after create", time.Since(start).Round(time.Millisecond))
	if err := poll(e.ctx, time.Minute, "ImagePolicy Accepted", func(ctx context.Context) error {
		o, err := dyn.Resource(imagePolicies).Namespace("team").Get(ctx, "team-tools", metav1.GetOptions{})
		if err != nil {
			return err
		}
		conds, _, _ := unstructured.NestedSlice(o.Object, "status", "conditions")
		for _, c := range conds {
			if m, ok := c.(map[string]any); ok && m["type"] == "Accepted" && m["status"] == "True" {
				return nil
			}
		}
		return fmt.Errorf("conditions %v", conds)
	}); err != nil {
		t.Error(err)
	}
	// The next decision: a new Deployment with the same image runs (the daemon reloads the
	// directory within its 2s poll; a pull refused before that is retried by kubelet).
	after := e.deployment(t, "team", "after", e.team.Ref, corev1.PullAlways)
	if _, err := waitPod(e.ctx, e.b.Cluster.Admin, "team", after.Name, 2*time.Minute, "running", running); err != nil {
		t.Fatal(err)
	}
	t.Logf("admitted %s after the ImagePolicy was created", time.Since(start).Round(time.Millisecond))
}

func (e *e2e) cfg(t *testing.T) *rest.Config {
	rc, err := e.b.Cluster.Config(kube.AdminUser)
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

func (e *e2e) brokenConfigRejected(t *testing.T) {
	cs := e.b.Cluster.Admin
	n := e.b.Node
	good, err := os.ReadFile(n.Path("/etc/pullguard/config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := n.UnitProperty(e.ctx, "pullguard", "MainPID")
	if err != nil {
		t.Fatal(err)
	}
	cm, err := cs.CoreV1().ConfigMaps(pgNamespace).Get(e.ctx, "pullguard-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	orig := cm.Data["config.toml"]
	cm.Data["config.toml"] = orig + "\n[[signers]]\nname = \"broken\"\ntrust_store = \n"
	start := time.Now()
	if cm, err = cs.CoreV1().ConfigMaps(pgNamespace).Update(e.ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := e.waitDaemonPod(time.Minute, func(*corev1.Pod) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	if err := poll(e.ctx, 2*time.Minute, "the sync container rejects the broken config", func(context.Context) error {
		log, err := e.b.podLog(pod, "sync")
		if err != nil {
			return err
		}
		if !strings.Contains(log, "REJECTED") {
			return errors.New("not yet")
		}
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, "REJECTED") {
				t.Logf("sync: %s", l)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("rejected %s after the ConfigMap update", time.Since(start).Round(time.Millisecond))
	now, err := os.ReadFile(n.Path("/etc/pullguard/config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(now, good) {
		t.Errorf("the node's config changed:\n%s", now)
	}
	if p, _ := n.UnitProperty(e.ctx, "pullguard", "MainPID"); p != pid {
		t.Errorf("pullguard restarted (MainPID %s, was %s)", p, pid)
	}
	// Still enforcing: unsigned refused, signed admitted.
	e.waiting(t, e.deployment(t, "apps", "unsigned-after-broken-config", e.unsigned.Ref, corev1.PullAlways),
		2*time.Minute, []string{"SignatureValidationFailed", "ErrImagePull", "ImagePullBackOff"}, "SignatureValidationFailed")
	ok := e.deployment(t, "apps", "signed-after-broken-config", e.signed.Ref, corev1.PullAlways)
	if _, err := waitPod(e.ctx, cs, "apps", ok.Name, 2*time.Minute, "running", running); err != nil {
		t.Error(err)
	}
	cm.Data["config.toml"] = orig
	if _, err := cs.CoreV1().ConfigMaps(pgNamespace).Update(e.ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (e *e2e) upgrade(t *testing.T) {
	n := e.b.Node
	props := func(unit string) map[string]string {
		out := map[string]string{}
		for _, p := range []string{"MainPID", "InvocationID"} {
			v, err := n.UnitProperty(e.ctx, unit, p)
			if err != nil {
				t.Fatal(err)
			}
			out[p] = v
		}
		return out
	}
	pgBefore, kubeletBefore, ctdBefore := props("pullguard"), props("kubelet"), props("containerd")
	if err := e.m.SetImage("pullguard", e.b.Registry.Host+"/pullguard", "v2"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := e.apply(); err != nil {
		t.Fatal(err)
	}
	pod, err := e.waitDaemonPod(4*time.Minute, func(p *corev1.Pod) bool { return containerImage(p, "sync") == e.b.Registry.Host+"/pullguard:v2" })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("upgraded pod %s Ready %s after apply", pod.Name, time.Since(start).Round(time.Millisecond))
	if log, err := e.b.podLog(pod, "install"); err == nil {
		t.Logf("install log:\n%s", log)
	}
	pgAfter := props("pullguard")
	if pgAfter["InvocationID"] == pgBefore["InvocationID"] {
		t.Errorf("pullguard.service was not restarted by the upgrade (%v)", pgAfter)
	}
	for unit, before := range map[string]map[string]string{"kubelet": kubeletBefore, "containerd": ctdBefore} {
		if after := props(unit); after["InvocationID"] != before["InvocationID"] {
			t.Errorf("%s restarted by the upgrade: %v -> %v", unit, before, after)
		}
	}
	want, err := os.ReadFile(e.bin["v2"])
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(n.Path("/usr/local/bin/pullguard"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the node's /usr/local/bin/pullguard is not the v2 image's binary")
	}
	e.assertUntouched(t, e.longRunning)
}

// assertUntouched checks that a pod running before still runs the same container, never
// restarted.
func (e *e2e) assertUntouched(t *testing.T, before *corev1.Pod) {
	t.Helper()
	if before == nil {
		t.Error("no long-running pod (the signed image step failed)")
		return
	}
	now, err := e.b.Cluster.Admin.CoreV1().Pods(before.Namespace).Get(e.ctx, before.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, a := before.Status.ContainerStatuses[0], now.Status.ContainerStatuses[0]
	if now.UID != before.UID || a.ContainerID != b.ContainerID || a.RestartCount != 0 || a.State.Running == nil ||
		!a.State.Running.StartedAt.Equal(&b.State.Running.StartedAt) {
		t.Errorf("pod %s/%s touched: before %s %s, now %s %s restarts %d", before.Namespace, before.Name,
			b.ContainerID, describeState(b.State), a.ContainerID, describeState(a.State), a.RestartCount)
	}
}

func (e *e2e) killed(t *testing.T) {
	n := e.b.Node
	// Creates straight on containerd, into the sandbox of a pod kubelet runs (kubelet kills
	// sandboxes it does not know): sandboxes are not validated, containers are.
	target := e.deployment(t, "kube-system", "kill-target", e.b.Busybox.Ref, corev1.PullIfNotPresent)
	target, err := waitPod(e.ctx, e.b.Cluster.Admin, target.Namespace, target.Name, 2*time.Minute, "running", running)
	if err != nil {
		t.Fatal(err)
	}
	r := n.Exec(e.ctx, "crictl", "pods", "--quiet", "--state", "ready", "--name", target.Name, "--namespace", target.Namespace)
	sandbox := strings.TrimSpace(r.Stdout)
	if r.Err != nil || sandbox == "" || strings.Contains(sandbox, "\n") {
		t.Fatalf("sandbox of %s: %s", target.Name, r)
	}
	files := map[string]string{
		"/root/kill-pod.json": fmt.Sprintf(`{"metadata":{"name":%q,"namespace":%q,"uid":%q},`+
			`"linux":{"security_context":{"namespace_options":{"network":2}}}}`, target.Name, target.Namespace, target.UID),
		"/root/kill-ctr.json": fmt.Sprintf(`{"metadata":{"name":"extra"},"image":{"image":%q},"command":["sleep","3600"]}`, e.b.Busybox.Ref),
	}
	if err := writeFiles(n.Root, files, nil); err != nil {
		t.Fatal(err)
	}
	create := func() result {
		return n.Exec(e.ctx, "crictl", "create", sandbox, "/root/kill-ctr.json", "/root/kill-pod.json")
	}
	restartsBefore, err := n.UnitProperty(e.ctx, "pullguard", "NRestarts")
	if err != nil {
		t.Fatal(err)
	}
	invocation, _ := n.UnitProperty(e.ctx, "pullguard", "InvocationID")

	if _, err := n.Systemctl(e.ctx, "kill", "--signal=SIGKILL", "pullguard"); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	during := hostPod("apps", "created-while-down", e.signed.Ref, "sleep", "3600")
	if _, err := e.b.Cluster.Admin.CoreV1().Pods("apps").Create(e.ctx, during, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// systemd restarts it after RestartSec (2s): creates in between are refused.
	var refused result
	for time.Since(killed) < 1500*time.Millisecond {
		refused = create()
		if refused.Err == nil {
			t.Fatalf("create %s after pullguard was killed: admitted, want containerd's refusal", time.Since(killed).Round(time.Millisecond))
		}
		if strings.Contains(said(refused), `required plugin "pullguard" not present`) {
			break
		}
	}
	if !strings.Contains(said(refused), `required plugin "pullguard" not present`) {
		t.Errorf("create while pullguard is down: %s", refused)
	} else {
		for _, l := range strings.Split(said(refused), "\n") {
			if strings.Contains(l, "required plugin") {
				t.Logf("refused %s after the kill: %s", time.Since(killed).Round(time.Millisecond), l)
				break
			}
		}
	}
	if err := poll(e.ctx, time.Minute, "pullguard restarted by systemd", func(ctx context.Context) error {
		state, _ := n.UnitProperty(ctx, "pullguard", "ActiveState")
		inv, _ := n.UnitProperty(ctx, "pullguard", "InvocationID")
		if state != "active" || inv == invocation {
			return fmt.Errorf("%s, invocation %s", state, inv)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if restarts, _ := n.UnitProperty(e.ctx, "pullguard", "NRestarts"); restarts == restartsBefore {
		t.Errorf("NRestarts still %s", restarts)
	}
	// Registered again: creates are decided again (kube-system admits everything).
	if err := poll(e.ctx, time.Minute, "a create admitted once pullguard is back", func(context.Context) error {
		if r := create(); r.Err != nil {
			return errors.New(r.String())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("creates admitted again %s after the kill", time.Since(killed).Round(time.Millisecond))
	// A pod created while pullguard was down runs once it is back, kubelet retrying.
	if _, err := waitPod(e.ctx, e.b.Cluster.Admin, during.Namespace, during.Name, 2*time.Minute, "running", running); err != nil {
		t.Error(err)
	}
	e.assertUntouched(t, e.longRunning)
}

// said is what a command printed, with the quotes crictl escapes in its log lines unescaped.
func said(r result) string { return strings.ReplaceAll(r.Stdout+r.Stderr, `\"`, `"`) }

func (e *e2e) uninstall(t *testing.T) {
	if err := e.m.AddComponent("uninstall"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := e.apply(); err != nil {
		t.Fatal(err)
	}
	var pod *corev1.Pod
	if err := poll(e.ctx, 4*time.Minute, "the uninstaller logs pullguard uninstalled", func(ctx context.Context) error {
		pods, err := e.b.Cluster.Admin.CoreV1().Pods(pgNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=pullguard"})
		if err != nil {
			return err
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			if len(p.Spec.Containers) == 1 && p.Spec.Containers[0].Name == "uninstall" {
				log, err := e.b.podLog(p, "uninstall")
				if err != nil {
					return err
				}
				if strings.Contains(log, "pullguard uninstalled") {
					pod = p
					return nil
				}
				return fmt.Errorf("log: %s", log)
			}
		}
		return fmt.Errorf("no uninstaller among %d pods", len(pods.Items))
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("uninstalled %s after apply", time.Since(start).Round(time.Millisecond))
	if log, err := e.b.podLog(pod, "uninstall"); err == nil {
		t.Logf("uninstall log:\n%s", log)
	}
	n := e.b.Node
	for f, want := range e.before {
		got, err := os.ReadFile(n.Path(f))
		if err != nil {
			t.Errorf("%s: %v", f, err)
		} else if !bytes.Equal(got, want) {
			t.Errorf("%s not restored byte for byte:\n%s\nwas:\n%s", f, got, want)
		}
	}
	if ents, err := os.ReadDir(n.Path(ContainerdDropInDir)); err != nil || len(ents) != 0 {
		t.Errorf("%s: %v %v, want it empty as before", ContainerdDropInDir, ents, err)
	}
	if load, _ := n.UnitProperty(e.ctx, "pullguard", "LoadState"); load != "not-found" {
		t.Errorf("pullguard.service LoadState %q, want not-found", load)
	}
	for _, p := range []string{"/usr/local/bin/pullguard", "/etc/pullguard", "/var/lib/pullguard/install"} {
		if _, err := os.Lstat(n.Path(p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still on the node (%v)", p, err)
		}
	}
	if err := e.b.WaitNodeReady(e.ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	// Nothing enforces any more.
	free := e.deployment(t, "apps", "unsigned-after-uninstall", e.unsigned.Ref, corev1.PullAlways)
	if _, err := waitPod(e.ctx, e.b.Cluster.Admin, "apps", free.Name, 2*time.Minute, "running", running); err != nil {
		t.Error(err)
	}
	e.assertUntouched(t, e.longRunning)
	// `kubectl delete -k daemonset/`: the DaemonSet and its pod go.
	if err := e.b.Cluster.Admin.AppsV1().DaemonSets(pgNamespace).Delete(e.ctx, "pullguard", metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
}
