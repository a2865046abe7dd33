// Package v1beta1 holds pullguard's custom resources, ImagePolicy and ClusterImagePolicy of
// pullguard.dev/v1beta1, as Kubernetes objects: the types controller-gen generates
// daemonset/crds from (make generate; a test fails when the committed CRDs differ), and the
// resources the policy-sync agent watches.
//
// Only the objects' envelope is here: metav1.TypeMeta, ObjectMeta and the status the agent
// writes. Their spec is plugin/policy/v1beta1.ImagePolicySpec, kept in a package without
// Kubernetes imports because the node daemon decodes policy files into it and is not to link
// client-go or k8s.io/api; this package, which imports apimachinery, is for the agent and the
// generator only. controller-gen follows the Spec field across the two packages, so the CRD
// schema comes from the markers over there and the printer columns, scope and status from here.
//
// +groupName=pullguard.dev
package v1beta1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	policyv1beta1 "github.com/pullguard/pullguard/plugin/policy/v1beta1"
)

// GroupVersion is pullguard.dev/v1beta1.
var GroupVersion = schema.GroupVersion{Group: policyv1beta1.Group, Version: policyv1beta1.Version}

// The resources of the two custom resources (their kinds are the type names below), and the
// condition the agent writes, which the Accepted printer column reads.
const (
	ResourceImagePolicies        = "imagepolicies"
	ResourceClusterImagePolicies = "clusterimagepolicies"
	ConditionAccepted            = "Accepted"
)

// ImagePolicy decides which images may run in its namespace. When a namespace has any
// ImagePolicy, those apply there and the ClusterImagePolicies do not.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:path=imagepolicies,singular=imagepolicy,scope=Namespaced,categories=pullguard
// +kubebuilder:subresource:status
// +kubebuilder:metadata:labels="app.kubernetes.io/name=pullguard"
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="Accepted",type=string,description="Whether pullguard's agent accepted the object (see status.conditions).",JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Repositories",type=string,priority=1,JSONPath=`.spec.repositories[*].name`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ImagePolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec policyv1beta1.ImagePolicySpec `json:"spec"`

	// Written by one elected pullguard agent (leader election), not by every node.
	// +optional
	Status PolicyStatus `json:"status,omitempty"`
}

// ClusterImagePolicy decides which images may run in the namespaces that have no ImagePolicy
// of their own, and for pulls made without a pod.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:path=clusterimagepolicies,singular=clusterimagepolicy,scope=Cluster,categories=pullguard
// +kubebuilder:subresource:status
// +kubebuilder:metadata:labels="app.kubernetes.io/name=pullguard"
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="Accepted",type=string,description="Whether pullguard's agent accepted the object (see status.conditions).",JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Repositories",type=string,priority=1,JSONPath=`.spec.repositories[*].name`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ClusterImagePolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec policyv1beta1.ImagePolicySpec `json:"spec"`

	// Written by one elected pullguard agent (leader election), not by every node.
	// +optional
	Status PolicyStatus `json:"status,omitempty"`
}

// PolicyStatus is what the elected agent last concluded about the object.
type PolicyStatus struct {
	// The generation the conditions describe.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Accepted: True when the object is valid and rendered into every node's synced policy
	// directory, False with the reason when it is not applied.
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}
