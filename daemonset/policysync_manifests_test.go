package daemonset_test

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The policy-sync component adds one container that alone holds an API token, and the base ships
// the CRDs and an agent role that cannot change policies or read Secrets.
func TestPolicySyncComponent(t *testing.T) {
	r := render(t, "policy-sync")
	ds := byName(t, r.daemonSets, "pullguard", func(d appsv1.DaemonSet) metav1.ObjectMeta { return d.ObjectMeta })
	pod := ds.Spec.Template.Spec
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the pod must not mount a token into every container")
	}
	var found bool
	for _, c := range pod.Containers {
		tokenMount := mountAt(c, "/var/run/secrets/kubernetes.io/serviceaccount")
		if c.Name != "policy-sync" {
			if tokenMount != "" {
				t.Errorf("container %s gets the API token", c.Name)
			}
			continue
		}
		found = true
		if len(c.Args) == 0 || c.Args[0] != "policy-sync" || !strings.Contains(c.Image, "pullguard") || c.Image == "pullguard" {
			t.Errorf("policy-sync container: args %v image %q", c.Args, c.Image)
		}
		if tokenMount != "policy-sync-token" {
			t.Errorf("policy-sync token volume = %q", tokenMount)
		}
		if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || *c.SecurityContext.Privileged {
			t.Error("policy-sync must not be privileged")
		}
		if mountAt(c, "/host/etc/pullguard") == "" || mountAt(c, "/host") != "" {
			t.Errorf("policy-sync mounts: %+v (want /host/etc/pullguard only, not the host root)", c.VolumeMounts)
		}
	}
	if !found {
		t.Fatal("no policy-sync container")
	}
	for _, want := range []string{"imagepolicies.pullguard.dev", "clusterimagepolicies.pullguard.dev"} {
		if !slices.ContainsFunc(r.crds, func(c apiextensionsv1.CustomResourceDefinition) bool { return c.Name == want }) {
			t.Errorf("CRD %s missing", want)
		}
	}
	for _, c := range r.crds {
		v := c.Spec.Versions[0]
		if v.Subresources == nil || v.Subresources.Status == nil || v.Schema == nil || len(v.AdditionalPrinterColumns) == 0 {
			t.Errorf("CRD %s: status subresource, schema and printer columns are required", c.Name)
		}
	}
	cr := byName(t, r.clusterRoles, "pullguard-policy-sync", func(c rbacv1.ClusterRole) metav1.ObjectMeta { return c.ObjectMeta })
	for _, rule := range cr.Rules {
		for _, v := range rule.Verbs {
			if slices.Contains([]string{"create", "update", "patch", "delete"}, v) && !slices.ContainsFunc(rule.Resources, func(s string) bool { return strings.HasSuffix(s, "/status") || s == "events" }) {
				t.Errorf("agent may %s %v", v, rule.Resources)
			}
		}
		if slices.Contains(rule.Resources, "secrets") {
			t.Errorf("agent may read Secrets cluster-wide: %+v", rule)
		}
	}
}
