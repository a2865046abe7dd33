// Package v1beta1 is the spec of pullguard's policy API, pullguard.dev/v1beta1: what an
// ImagePolicy or ClusterImagePolicy asks of the images it matches. It is the one description of
// that schema. The custom resource definitions are generated from it (its kubebuilder markers
// become their OpenAPI schema and CEL rules), YAML policy files and the node config's
// [[policies]] tables decode into it, and plugin/policy converts it into the matching engine's
// model in one place (policy.FromSpec).
//
// The package imports nothing from Kubernetes on purpose: the node daemon decodes policy files
// into these types and is meant to run without client-go or k8s.io/api. The objects that wrap
// the spec in metav1.TypeMeta, ObjectMeta and a status live in daemonset/api/v1beta1, which
// only the policy-sync agent and CRD generation use; controller-gen follows the Spec field from
// there into this package.
//
// Every field carries three names, one per encoding, so that the encodings cannot drift apart:
// json (the custom resource, and the name controller-gen reads), yaml (policy files; the same
// camelCase name) and toml (the node config, snake_case like the rest of that file; "-" for the
// compatibility fields the TOML form never had, which TOML then rejects as unknown keys).
//
// Besides pullguard's own fields the spec accepts the two formats policies were written in
// before: securityenforcement.admission.cloud.ibm.com/v1beta1 (trust.signerSecrets, va) and
// Portieris' portieris.cloud.ibm.com/v1 (vulnerability, mutateImage). What pullguard cannot
// honour (policy.simple, trust.trustServer) is decoded only so that it can be refused by name:
// dropping it would admit images their author meant to check.
package v1beta1
