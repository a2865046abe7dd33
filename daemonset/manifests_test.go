// Package daemonset_test renders the kustomize base offline and checks that
// every object is a valid Kubernetes object and that they fit together.
package daemonset_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/pullguard/pullguard/config"
	"github.com/pullguard/pullguard/daemonset/bundle"
	"github.com/pullguard/pullguard/daemonset/hoststate"
	"github.com/pullguard/pullguard/plugin/policy"
)

const namespace = "pullguard-system"

// rendered holds the decoded objects of one kustomize build.
type rendered struct {
	namespaces      []corev1.Namespace
	serviceAccounts []corev1.ServiceAccount
	configMaps      []corev1.ConfigMap
	roles           []rbacv1.Role
	roleBindings    []rbacv1.RoleBinding
	clusterRoles    []rbacv1.ClusterRole
	clusterBindings []rbacv1.ClusterRoleBinding
	crds            []apiextensionsv1.CustomResourceDefinition
	daemonSets      []appsv1.DaemonSet
}

// render builds the kustomization in dir (optionally with components
// enabled, on a copy) and decodes every object strictly into its type.
func render(t *testing.T, components ...string) *rendered {
	t.Helper()
	dir := "."
	if len(components) > 0 {
		dir = t.TempDir()
		if err := os.CopyFS(dir, os.DirFS(".")); err != nil {
			t.Fatal(err)
		}
		k := filepath.Join(dir, "kustomization.yaml")
		data, err := os.ReadFile(k)
		if err != nil {
			t.Fatal(err)
		}
		data = append(data, "\ncomponents:\n"...)
		for _, c := range components {
			data = append(data, "- components/"+c+"\n"...)
		}
		if err := os.WriteFile(k, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resMap, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build: %v", err)
	}
	out := &rendered{}
	for _, res := range resMap.Resources() {
		j, err := res.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		var target any
		switch res.GetKind() {
		case "Namespace":
			out.namespaces = append(out.namespaces, corev1.Namespace{})
			target = &out.namespaces[len(out.namespaces)-1]
		case "ServiceAccount":
			out.serviceAccounts = append(out.serviceAccounts, corev1.ServiceAccount{})
			target = &out.serviceAccounts[len(out.serviceAccounts)-1]
		case "ConfigMap":
			out.configMaps = append(out.configMaps, corev1.ConfigMap{})
			target = &out.configMaps[len(out.configMaps)-1]
		case "Role":
			out.roles = append(out.roles, rbacv1.Role{})
			target = &out.roles[len(out.roles)-1]
		case "RoleBinding":
			out.roleBindings = append(out.roleBindings, rbacv1.RoleBinding{})
			target = &out.roleBindings[len(out.roleBindings)-1]
		case "ClusterRole":
			out.clusterRoles = append(out.clusterRoles, rbacv1.ClusterRole{})
			target = &out.clusterRoles[len(out.clusterRoles)-1]
		case "ClusterRoleBinding":
			out.clusterBindings = append(out.clusterBindings, rbacv1.ClusterRoleBinding{})
			target = &out.clusterBindings[len(out.clusterBindings)-1]
		case "CustomResourceDefinition":
			out.crds = append(out.crds, apiextensionsv1.CustomResourceDefinition{})
			target = &out.crds[len(out.crds)-1]
		case "DaemonSet":
			out.daemonSets = append(out.daemonSets, appsv1.DaemonSet{})
			target = &out.daemonSets[len(out.daemonSets)-1]
		default:
			t.Fatalf("unexpected kind %s %s: add a strict decoder for it in render()", res.GetKind(), res.GetName())
		}
		if err := decodeStrict(j, target); err != nil {
			t.Errorf("%s %s: %v", res.GetKind(), res.GetName(), err)
		}
		if want := wantAPIVersion[res.GetKind()]; res.GetApiVersion() != want {
			t.Errorf("%s %s: apiVersion %s, want %s", res.GetKind(), res.GetName(), res.GetApiVersion(), want)
		}
	}
	return out
}

var wantAPIVersion = map[string]string{
	"Namespace": "v1", "ServiceAccount": "v1", "ConfigMap": "v1",
	"Role": "rbac.authorization.k8s.io/v1", "RoleBinding": "rbac.authorization.k8s.io/v1",
	"ClusterRole": "rbac.authorization.k8s.io/v1", "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
	"CustomResourceDefinition": "apiextensions.k8s.io/v1",
	"DaemonSet":                "apps/v1",
}

// decodeStrict decodes the way the API server does (field names case
// sensitive) and rejects unknown or duplicate fields: a typo such as hostPid
// would otherwise be silently dropped.
func decodeStrict(data []byte, v any) error {
	strictErrs, err := kjson.UnmarshalStrict(data, v)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

func TestBaseRendersAndFitsTogether(t *testing.T) {
	r := render(t)
	if len(r.namespaces) != 1 || r.namespaces[0].Name != namespace {
		t.Fatalf("namespaces = %v", r.namespaces)
	}
	ds := byName(t, r.daemonSets, "pullguard", func(d appsv1.DaemonSet) metav1.ObjectMeta { return d.ObjectMeta })
	sa := byName(t, r.serviceAccounts, "pullguard", func(d corev1.ServiceAccount) metav1.ObjectMeta { return d.ObjectMeta })
	role := byName(t, r.roles, "pullguard-agent", func(d rbacv1.Role) metav1.ObjectMeta { return d.ObjectMeta })
	rb := byName(t, r.roleBindings, "pullguard-agent", func(d rbacv1.RoleBinding) metav1.ObjectMeta { return d.ObjectMeta })
	// Everything namespaced lives in pullguard-system.
	var metas []metav1.ObjectMeta
	for _, o := range r.serviceAccounts {
		metas = append(metas, o.ObjectMeta)
	}
	for _, o := range r.roles {
		metas = append(metas, o.ObjectMeta)
	}
	for _, o := range r.roleBindings {
		metas = append(metas, o.ObjectMeta)
	}
	for _, o := range r.configMaps {
		metas = append(metas, o.ObjectMeta)
	}
	for _, o := range r.daemonSets {
		metas = append(metas, o.ObjectMeta)
	}
	for _, m := range metas {
		if m.Namespace != namespace {
			t.Errorf("%s is in namespace %q", m.Name, m.Namespace)
		}
	}
	// Cluster-wide bindings, if any, bind existing roles to existing accounts.
	for _, b := range r.clusterBindings {
		if b.RoleRef.Kind == "ClusterRole" && !slices.ContainsFunc(r.clusterRoles, func(c rbacv1.ClusterRole) bool { return c.Name == b.RoleRef.Name }) {
			t.Errorf("ClusterRoleBinding %s refers to missing ClusterRole %s", b.Name, b.RoleRef.Name)
		}
		for _, s := range b.Subjects {
			if s.Kind == "ServiceAccount" && !slices.ContainsFunc(r.serviceAccounts, func(a corev1.ServiceAccount) bool { return a.Name == s.Name && a.Namespace == s.Namespace }) {
				t.Errorf("ClusterRoleBinding %s binds missing ServiceAccount %s/%s", b.Name, s.Namespace, s.Name)
			}
		}
	}
	pod := ds.Spec.Template.Spec

	// The selector selects the pods.
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template", k, v)
		}
	}
	// ServiceAccount exists and the Role bound to it reads only our ConfigMaps.
	if pod.ServiceAccountName != sa.Name {
		t.Errorf("serviceAccountName %q, ServiceAccount is %q", pod.ServiceAccountName, sa.Name)
	}
	if rb.RoleRef.Kind != "Role" || rb.RoleRef.Name != role.Name || rb.RoleRef.APIGroup != rbacv1.GroupName {
		t.Errorf("roleRef = %+v, Role is %s", rb.RoleRef, role.Name)
	}
	if len(rb.Subjects) != 1 || rb.Subjects[0].Kind != "ServiceAccount" || rb.Subjects[0].Name != sa.Name || rb.Subjects[0].Namespace != sa.Namespace {
		t.Errorf("subjects = %+v", rb.Subjects)
	}
	cmNames := map[string]*corev1.ConfigMap{}
	for i := range r.configMaps {
		cmNames[r.configMaps[i].Name] = &r.configMaps[i]
	}
	for _, rule := range role.Rules {
		if !slices.Equal(rule.APIGroups, []string{""}) || !slices.Equal(rule.Resources, []string{"configmaps"}) {
			t.Errorf("role grants more than configmaps: %+v", rule)
		}
		for _, v := range rule.Verbs {
			if !slices.Contains([]string{"get", "list", "watch"}, v) {
				t.Errorf("role grants verb %q", v)
			}
		}
		if len(rule.ResourceNames) == 0 {
			t.Errorf("role is not limited to named ConfigMaps")
		}
		for _, n := range rule.ResourceNames {
			if cmNames[n] == nil && !optionalConfigMap(pod, n) {
				t.Errorf("role names ConfigMap %q which does not exist", n)
			}
		}
	}
	// Every volume's ConfigMap exists, and every mount names a volume.
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
		if v.ConfigMap != nil {
			cm := cmNames[v.ConfigMap.Name]
			if cm == nil && v.ConfigMap.Optional != nil && *v.ConfigMap.Optional {
				continue
			}
			if cm == nil {
				t.Errorf("volume %s uses ConfigMap %q which does not exist", v.Name, v.ConfigMap.Name)
				continue
			}
			for _, item := range v.ConfigMap.Items {
				if _, ok := cm.Data[item.Key]; !ok {
					t.Errorf("volume %s uses key %q missing from ConfigMap %s", v.Name, item.Key, cm.Name)
				}
			}
		}
	}
	all := append(append([]corev1.Container{}, pod.InitContainers...), pod.Containers...)
	for _, c := range all {
		for _, m := range c.VolumeMounts {
			if _, ok := volumes[m.Name]; !ok {
				t.Errorf("container %s mounts unknown volume %q", c.Name, m.Name)
			}
		}
		if !strings.Contains(c.Image, "pullguard") || c.Image == "pullguard" {
			t.Errorf("container %s image %q: the images: entry did not apply", c.Name, c.Image)
		}
	}
	// The installer: privileged, host root at /host, then install; the
	// syncer reads what the installer wrote.
	if len(pod.InitContainers) != 1 || len(pod.Containers) != 1 {
		t.Fatalf("containers: %d init, %d main", len(pod.InitContainers), len(pod.Containers))
	}
	inst, sync := pod.InitContainers[0], pod.Containers[0]
	if inst.SecurityContext == nil || inst.SecurityContext.Privileged == nil || !*inst.SecurityContext.Privileged {
		t.Error("installer is not privileged")
	}
	if !slices.Equal(inst.Args[:3], []string{"install", "--host-root", "/host"}) || !slices.Equal(sync.Args[:3], []string{"sync", "--host-root", "/host"}) {
		t.Errorf("args: install %v, sync %v", inst.Args, sync.Args)
	}
	if host := volumes["host"]; host.HostPath == nil || host.HostPath.Path != "/" {
		t.Errorf("host volume = %+v", host)
	}
	if mountAt(inst, "/host") != "host" || mountAt(sync, "/host") != "host" || mountAt(sync, "/host/etc/pullguard") != "host-etc-pullguard" {
		t.Error("host root / config dir not mounted where the commands expect them")
	}
	// --source /etc/pullguard-src: config/config.toml and policies/.
	for _, c := range []corev1.Container{inst, sync} {
		if v := volumes[mountAt(c, "/etc/pullguard-src/config")]; v.ConfigMap == nil || cmNames[v.ConfigMap.Name].Data["config.toml"] == "" {
			t.Errorf("%s: no config.toml under /etc/pullguard-src/config", c.Name)
		}
		if v := volumes[mountAt(c, "/etc/pullguard-src/policies")]; v.ConfigMap == nil || len(cmNames[v.ConfigMap.Name].Data) == 0 {
			t.Errorf("%s: no policies under /etc/pullguard-src/policies", c.Name)
		}
		if v := volumes[mountAt(c, "/etc/pullguard-src/truststore")]; v.ConfigMap == nil || v.ConfigMap.Name != "pullguard-truststore" {
			t.Errorf("%s: optional trust store ConfigMap not at /etc/pullguard-src/truststore", c.Name)
		}
	}
	if sync.SecurityContext == nil || sync.SecurityContext.Privileged == nil || *sync.SecurityContext.Privileged {
		t.Error("the long-running sync container must not be privileged")
	}
	if !pod.HostPID {
		t.Error("hostPID is needed for nsenter -t 1")
	}
	if len(pod.Tolerations) != 1 || pod.Tolerations[0].Operator != corev1.TolerationOpExists || pod.Tolerations[0].Key != "" {
		t.Errorf("tolerations = %+v, want tolerate everything", pod.Tolerations)
	}
	if _, ok := pod.NodeSelector["pullguard.dev/enabled"]; ok {
		t.Error("base must run on every node; staged rollout is opt-in")
	}
}

func byName[T any](t *testing.T, objs []T, name string, meta func(T) metav1.ObjectMeta) T {
	t.Helper()
	for _, o := range objs {
		if meta(o).Name == name {
			return o
		}
	}
	var zero T
	t.Fatalf("no %T named %q in the rendered objects", zero, name)
	return zero
}

func optionalConfigMap(pod corev1.PodSpec, name string) bool {
	for _, v := range pod.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == name && v.ConfigMap.Optional != nil && *v.ConfigMap.Optional {
			return true
		}
	}
	return false
}

func mountAt(c corev1.Container, path string) string {
	for _, m := range c.VolumeMounts {
		if m.MountPath == path {
			return m.Name
		}
	}
	return ""
}

func TestComponents(t *testing.T) {
	dsOf := func(r *rendered) appsv1.DaemonSet {
		return byName(t, r.daemonSets, "pullguard", func(d appsv1.DaemonSet) metav1.ObjectMeta { return d.ObjectMeta })
	}
	staged := dsOf(render(t, "staged-rollout")).Spec.Template.Spec
	if staged.NodeSelector["pullguard.dev/enabled"] != "true" || staged.NodeSelector["kubernetes.io/os"] != "linux" {
		t.Errorf("staged nodeSelector = %v", staged.NodeSelector)
	}
	// Alone, and after policy-sync (whose container also writes to /etc/pullguard and whose
	// volume shifts the others), as README.md tells users to add it.
	for _, comps := range [][]string{{"uninstall"}, {"policy-sync", "uninstall"}} {
		un := dsOf(render(t, comps...)).Spec.Template.Spec
		if len(un.InitContainers) != 0 || len(un.Containers) != 1 {
			t.Fatalf("%v: uninstall pod: %d init, %d containers", comps, len(un.InitContainers), len(un.Containers))
		}
		if c := un.Containers[0]; !slices.Equal(c.Args, []string{"uninstall", "--host-root", "/host", "--wait"}) || mountAt(c, "/host") != "host" {
			t.Errorf("%v: uninstall container = %+v", comps, c)
		}
		for _, v := range un.Volumes {
			if v.HostPath != nil && v.HostPath.Type != nil && *v.HostPath.Type == corev1.HostPathDirectoryOrCreate {
				t.Errorf("%v: uninstall pod would recreate %s on the host", comps, v.HostPath.Path)
			}
		}
	}
}

// The ConfigMaps' config and policies load with the project's own loaders,
// and the defaults are the seed's: cluster "*" needs trust and VA, the
// system namespaces are admitted.
func TestConfigMapContentIsValid(t *testing.T) {
	r := render(t)
	var cfgData string
	b := &bundle.Bundle{Policies: map[string][]byte{}}
	for _, cm := range r.configMaps {
		switch cm.Name {
		case "pullguard-config":
			cfgData = cm.Data["config.toml"]
		case "pullguard-policies":
			for k, v := range cm.Data {
				b.Policies[k] = []byte(v)
			}
		}
	}
	b.Config = []byte(cfgData)
	c, err := config.Parse(b.Config, "pullguard-config/config.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy.Dir != hoststate.PoliciesPath {
		t.Errorf("[policy] dir = %q, want %q", c.Policy.Dir, hoststate.PoliciesPath)
	}
	if err := b.Validate(hoststate.Root(t.TempDir()), hoststate.Node{}); err != nil {
		t.Fatalf("ConfigMap content does not validate: %v", err)
	}
	var policies []policy.Policy
	for _, name := range b.PolicyNames() {
		ps, err := policy.ParseYAML(b.Policies[name], name)
		if err != nil {
			t.Fatal(err)
		}
		policies = append(policies, ps...)
	}
	set, err := policy.NewSet(policies, policy.Mode(c.Policy.DefaultMode))
	if err != nil {
		t.Fatal(err)
	}
	checkDefaults(t, set)
}

func checkDefaults(t *testing.T, set *policy.Set) {
	t.Helper()
	tests := []struct {
		namespace, image string
		trust, va        bool
	}{
		{"default", "docker.io/library/nginx:1.27", true, true},
		{"team-a", "127.0.0.1:5000/app:v1", true, true},
		{"kube-system", "registry.k8s.io/kube-proxy:v1.34.0", false, false},
		{namespace, "127.0.0.1:5000/pullguard:latest", false, false},
	}
	for _, tc := range tests {
		m, err := set.Match(tc.namespace, tc.image)
		if err != nil {
			t.Fatalf("Match(%s, %s): %v", tc.namespace, tc.image, err)
		}
		if m.Rule == nil {
			t.Errorf("%s %s denied outright: %s", tc.namespace, tc.image, m.Reason)
			continue
		}
		if m.Rule.Checks.Trust.Enabled != tc.trust || m.Rule.Checks.VA.Enabled != tc.va {
			t.Errorf("%s %s: trust=%t va=%t, want trust=%t va=%t (rule %q of %s)", tc.namespace, tc.image,
				m.Rule.Checks.Trust.Enabled, m.Rule.Checks.VA.Enabled, tc.trust, tc.va, m.Rule.Name, m.Policy)
		}
	}
}

func TestStrictDecodeCatchesTypos(t *testing.T) {
	var ds appsv1.DaemonSet
	if err := decodeStrict([]byte(`{"apiVersion":"apps/v1","kind":"DaemonSet","spec":{"template":{"spec":{"hostPid":true}}}}`), &ds); err == nil {
		t.Error("hostPid (typo of hostPID) accepted")
	}
	if err := decodeStrict([]byte(`{"apiVersion":"apps/v1","kind":"DaemonSet","spec":{"template":{"spec":{"hostPID":true}}}}`), &ds); err != nil || !ds.Spec.Template.Spec.HostPID {
		t.Errorf("valid object rejected: %v", err)
	}
}
