package daemonset_test

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestRunningWorkloadsComponent: the agent that evicts gets the API token and the eviction
// RBAC, sees only the daemon's admin socket directory of the host, read-only, and is not
// privileged; no other container gets the token.
func TestRunningWorkloadsComponent(t *testing.T) {
	r := render(t, "running-workloads")
	ds := byName(t, r.daemonSets, "pullguard", func(d appsv1.DaemonSet) metav1.ObjectMeta { return d.ObjectMeta })
	var found bool
	for _, c := range ds.Spec.Template.Spec.Containers {
		tokenMount := mountAt(c, "/var/run/secrets/kubernetes.io/serviceaccount")
		if c.Name != "running" {
			if tokenMount != "" {
				t.Errorf("container %s gets the API token", c.Name)
			}
			continue
		}
		found = true
		if len(c.Args) == 0 || c.Args[0] != "running" || tokenMount != "running-token" {
			t.Errorf("running container: args %v token volume %q", c.Args, tokenMount)
		}
		if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || *c.SecurityContext.Privileged {
			t.Error("the running agent must not be privileged")
		}
		if mountAt(c, "/host/run/pullguard") == "" || mountAt(c, "/host") != "" || mountAt(c, "/host/etc/pullguard") != "" {
			t.Errorf("running mounts: %+v (want the admin socket's directory only)", c.VolumeMounts)
		}
		if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "NODE_NAME" && e.ValueFrom != nil }) {
			t.Error("the running agent does not know its node (NODE_NAME)")
		}
	}
	if !found {
		t.Fatal("no running container")
	}
	var rules []string
	for _, cr := range r.clusterRoles {
		if cr.Name != "pullguard-running-workloads" {
			continue
		}
		for _, rule := range cr.Rules {
			rules = append(rules, strings.Join(rule.Resources, ",")+":"+strings.Join(rule.Verbs, ","))
		}
	}
	if want := []string{"pods:get", "pods/eviction:create", "events:create"}; !slices.Equal(rules, want) {
		t.Errorf("running-workloads ClusterRole rules %v, want exactly %v", rules, want)
	}
}
