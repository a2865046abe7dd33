// Package policysync is the node agent that turns pullguard's ImagePolicy and ClusterImagePolicy
// custom resources into policy files on the node. It watches both kinds through the API server,
// validates every object with plugin/policy exactly as the host daemon will load it, and swaps a
// complete snapshot of the valid ones into a directory the host daemon reads. An invalid object is
// never written (its last good version stays), and the API server being away never removes what
// is on disk: the node keeps enforcing its last synced policies.
package policysync

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/pullguard/pullguard/plugin/policy"
	policyv1beta1 "github.com/pullguard/pullguard/plugin/policy/v1beta1"
)

// Group and version of pullguard's custom resources.
const (
	Group   = policyv1beta1.Group
	Version = policyv1beta1.Version
)

// Key identifies one object: kind, namespace ("" for cluster policies) and name.
type Key struct {
	Kind      policy.Kind
	Namespace string
	Name      string
}

func (k Key) String() string {
	if k.Namespace == "" {
		return string(k.Kind) + " " + k.Name
	}
	return string(k.Kind) + " " + k.Namespace + "/" + k.Name
}

// FileName is the file of the synced directory that holds the object: one file for all
// ClusterImagePolicies and one per namespace for its ImagePolicies. A namespace's policies decide
// together (any ImagePolicy replaces the cluster policy there), so each such group changes in
// one atomic rename, and a change touches one file however many objects exist. '_' cannot occur
// in a namespace name, so a file name maps back to exactly one group.
func (k Key) FileName() string {
	if k.Kind == policy.KindCluster {
		return clusterFile
	}
	return string(policy.KindNamespace) + "_" + k.Namespace + ".yaml"
}

const clusterFile = string(policy.KindCluster) + ".yaml"

// ourFile reports whether a file name is one the agent writes.
func ourFile(name string) bool {
	if name == clusterFile {
		return true
	}
	ns, ok := strings.CutPrefix(name, string(policy.KindNamespace)+"_")
	if !ok {
		return false
	}
	ns, ok = strings.CutSuffix(ns, ".yaml")
	return ok && namespaceRE.MatchString(ns)
}

// Kubernetes object names (DNS subdomains) and namespaces (DNS labels), as the API server
// enforces them; anything else found on disk is not ours.
var (
	nameRE      = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)
	namespaceRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
)

// Object is the part of a custom resource the agent renders. Spec is the object's spec as the API
// server returned it (JSON-shaped values).
type Object struct {
	Key             Key
	UID             string
	ResourceVersion string
	Generation      int64
	Spec            map[string]any
}

// Rendered is an object turned into a policy file, validated.
type Rendered struct {
	Key    Key
	Data   []byte
	Policy policy.Policy
}

// SignerCheck reports whether a signer name is defined in the node config. The host daemon
// refuses a whole policy set that names an unknown signer, so one such object would freeze every
// later policy change on the node; the agent rejects that object instead.
type SignerCheck func(name string) bool

// Render turns an object into the YAML document plugin/policy loads and validates it the way the
// host daemon will: strict parsing (an unknown field is an error), policy validation, and, when
// known is not nil, every trust signer defined on this node. dir is the synced directory, used
// only so that validation messages name the file the policy would live in.
func Render(obj Object, dir string, known SignerCheck) (*Rendered, error) {
	if err := checkKey(obj.Key); err != nil {
		return nil, err
	}
	meta := map[string]any{"name": obj.Key.Name}
	if obj.Key.Namespace != "" {
		meta["namespace"] = obj.Key.Namespace
	}
	doc := map[string]any{
		"apiVersion": policy.APIVersionPullguard,
		"kind":       string(obj.Key.Kind),
		"metadata":   meta,
	}
	if obj.Spec != nil {
		doc["spec"] = obj.Spec
	}
	body, err := yaml.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("render %s: %w", obj.Key, err)
	}
	// No resourceVersion here: it changes with every status write, and the file (and so every
	// node's daemon) must only change when the spec does.
	header := fmt.Sprintf("# Rendered by pullguard's policy-sync agent from %s (uid %s, generation %d).\n"+
		"# Do not edit: the agent rewrites this file. Edit the object with kubectl instead.\n",
		obj.Key, obj.UID, obj.Generation)
	data := append([]byte(header), body...)
	if len(data) > policy.MaxPolicyFileBytes {
		return nil, fmt.Errorf("%s: rendered policy is larger than %d bytes", obj.Key, policy.MaxPolicyFileBytes)
	}
	source := filepath.Join(dir, obj.Key.FileName())
	ps, err := policy.ParseYAML(data, source)
	if err != nil {
		return nil, err
	}
	if len(ps) != 1 {
		return nil, fmt.Errorf("%s: rendered %d policies, want 1", obj.Key, len(ps))
	}
	p := ps[0]
	// NewSet is what the daemon builds; it validates and compiles every pattern.
	if _, err := policy.NewSet(ps, ""); err != nil {
		return nil, err
	}
	if known != nil {
		if err := checkSigners(&p, known); err != nil {
			return nil, err
		}
	}
	return &Rendered{Key: obj.Key, Data: data, Policy: p}, nil
}

func checkKey(k Key) error {
	switch k.Kind {
	case policy.KindCluster:
		if k.Namespace != "" {
			return fmt.Errorf("%s: a cluster policy has no namespace", k)
		}
	case policy.KindNamespace:
		if !namespaceRE.MatchString(k.Namespace) {
			return fmt.Errorf("%s: invalid namespace %q", k, k.Namespace)
		}
	default:
		return fmt.Errorf("unknown kind %q", k.Kind)
	}
	if !nameRE.MatchString(k.Name) {
		return fmt.Errorf("%s: invalid name %q", k, k.Name)
	}
	return nil
}

// ErrUnknownSigner is wrapped when a policy names a signer the node config does not define.
var ErrUnknownSigner = errors.New("trust signer not defined in this node's config")

func checkSigners(p *policy.Policy, known SignerCheck) error {
	for _, r := range p.Rules {
		for _, s := range r.Checks.Trust.Signers {
			if !known(s) {
				return fmt.Errorf("%s: repositories[%d] %q: signer %q: %w ([[signers]] in config.toml)", p, r.Index, r.Name, s, ErrUnknownSigner)
			}
		}
	}
	return nil
}
