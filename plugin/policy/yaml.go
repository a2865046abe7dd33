package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	yaml "go.yaml.in/yaml/v2"
)

// API versions whose ImagePolicy / ClusterImagePolicy documents load as-is.
const (
	APIVersionSeed      = "securityenforcement.admission.cloud.ibm.com/v1beta1"
	APIVersionPortieris = "portieris.cloud.ibm.com/v1"
	APIVersionPullguard = "pullguard.dev/v1beta1"
)

// MaxPolicyFileBytes bounds one policy file (and ParseYAML's input).
const MaxPolicyFileBytes = 4 << 20

// The YAML form, decoded strictly: an unknown key under spec is an error, never ignored,
// because an ignored key could be a check the author expects to be enforced. Keys follow
// Kubernetes conventions (camelCase), as the documents are also custom resources.
type yamlDoc struct {
	APIVersion string    `yaml:"apiVersion"`
	Kind       string    `yaml:"kind"`
	Metadata   *yamlMeta `yaml:"metadata"`
	Spec       *yamlSpec `yaml:"spec"`
	// Output of "kubectl get -o yaml" carries a status; it is the server's, not a policy.
	Status any `yaml:"status"`
	// Items of a "kind: List" (or ImagePolicyList / ClusterImagePolicyList), as
	// "kubectl get imagepolicies -A -o yaml" writes them.
	Items []yamlDoc `yaml:"items"`
}

type yamlMeta struct {
	Name      string `yaml:"name"`
	Namespace string `yaml:"namespace"`
	// Other object metadata (labels, annotations, uid, …) is Kubernetes', accepted and unused.
	Other map[string]any `yaml:",inline"`
}

type yamlSpec struct {
	Repositories []yamlRepo `yaml:"repositories"`
	Mode         string     `yaml:"mode"`
}

type yamlRepo struct {
	Name   string      `yaml:"name"`
	Policy *yamlChecks `yaml:"policy"`
	// The seed's default ibm-system policy has an entry with "policies:" (a typo for
	// "policy:") and no value. Documents must load as-is, so exactly that form -- the key with
	// an empty value -- is accepted and means no checks; any value is an error.
	Policies *seedTypo `yaml:"policies"`
	Mode     string    `yaml:"mode"`
	FailOpen bool      `yaml:"failOpen"`
}

// seedTypo is only ever set when "policies:" carries a value (the decoder skips nulls).
type seedTypo struct{}

func (*seedTypo) UnmarshalYAML(func(any) error) error { return nil }

type yamlChecks struct {
	Trust *yamlTrust `yaml:"trust"`
	VA    *yamlVA    `yaml:"va"`
}

type yamlTrust struct {
	Enabled       bool            `yaml:"enabled"`
	SignerSecrets []yamlSecretRef `yaml:"signerSecrets"` // the seed's form
	Signers       []string        `yaml:"signers"`       // pullguard's form
}

type yamlSecretRef struct {
	Name string `yaml:"name"`
}

// yamlVA has TOMLVA's fields under the YAML documents' camelCase keys, so that
// one converts to the other and both share TOMLVA.VA.
type yamlVA struct {
	Enabled             bool            `yaml:"enabled"`
	MaxSeverity         *string         `yaml:"maxSeverity"`
	IgnoreUnfixed       *bool           `yaml:"ignoreUnfixed"`
	Unscanned           *string         `yaml:"unscanned"`
	MaxReportAge        *Duration       `yaml:"maxReportAge"`
	RequireSignedReport *bool           `yaml:"requireSignedReport"`
	Allow               []TOMLExemption `yaml:"allow"`
}

// ParseYAML reads one or more YAML documents (separated by "---"), each a ClusterImagePolicy
// or ImagePolicy. Empty documents are skipped. Errors name source, the 1-based document
// number and, where the decoder knows it, the line. When the input holds more than one
// policy, each Source is "source#doc N".
func ParseYAML(data []byte, source string) ([]Policy, error) {
	if len(data) > MaxPolicyFileBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", source, MaxPolicyFileBytes)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.SetStrict(true)
	var out []Policy
	var docs []string
	for n := 1; ; n++ {
		var doc yamlDoc
		err := decodeDoc(dec, &doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, n, err)
		}
		if doc.APIVersion == "" && doc.Kind == "" && doc.Metadata == nil && doc.Spec == nil && doc.Status == nil && doc.Items == nil {
			continue // empty document, e.g. a leading or trailing "---"
		}
		if isList(doc.Kind) {
			if err := doc.checkList(); err != nil {
				return nil, fmt.Errorf("%s: document %d: %w", source, n, err)
			}
			for j := range doc.Items {
				p, err := doc.Items[j].policy()
				if err != nil {
					return nil, fmt.Errorf("%s: document %d: items[%d]: %w", source, n, j, err)
				}
				out = append(out, p)
				docs = append(docs, fmt.Sprintf("doc %d item %d", n, j))
			}
			continue
		}
		p, err := doc.policy()
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, n, err)
		}
		out = append(out, p)
		docs = append(docs, fmt.Sprintf("doc %d", n))
	}
	for i := range out {
		out[i].Source = source
		if len(out) > 1 {
			out[i].Source = source + "#" + docs[i]
		}
	}
	return out, nil
}

func isList(kind string) bool {
	return kind == "List" || kind == string(KindCluster)+"List" || kind == string(KindNamespace)+"List"
}

func (d *yamlDoc) checkList() error {
	if d.Spec != nil {
		return errors.New("a list has items, not a spec")
	}
	if d.Kind == "List" && d.APIVersion != "v1" {
		return fmt.Errorf("kind List wants apiVersion v1, got %q", d.APIVersion)
	}
	if d.Kind != "List" && !knownAPIVersion(d.APIVersion) {
		return fmt.Errorf("unsupported apiVersion %q for %s", d.APIVersion, d.Kind)
	}
	for j := range d.Items {
		if isList(d.Items[j].Kind) {
			return fmt.Errorf("items[%d]: lists cannot be nested", j)
		}
	}
	return nil
}

func knownAPIVersion(v string) bool {
	return v == APIVersionSeed || v == APIVersionPortieris || v == APIVersionPullguard
}

// decodeDoc turns the decoder's panics-turned-errors into readable ones.
func decodeDoc(dec *yaml.Decoder, doc *yamlDoc) (err error) {
	err = dec.Decode(doc)
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	return errors.New(cleanYAMLError(err.Error()))
}

var (
	unknownFieldRE = regexp.MustCompile(`field (\S+) not found in type policy\.(\w+)`)
	dupFieldRE     = regexp.MustCompile(`field (\S+) already set in type policy\.(\w+)`)
	goTypeRE       = regexp.MustCompile(`policy\.(yaml\w+|seedTypo|Duration|Date)`)
)

var yamlTypeNames = map[string]string{
	"yamlDoc": "a policy document", "yamlMeta": "metadata", "yamlSpec": "spec",
	"yamlRepo": "a repositories entry", "yamlChecks": "policy", "yamlTrust": "trust",
	"yamlSecretRef": "a signerSecrets entry", "yamlVA": "va", "yamlExemption": "an allow entry",
	"seedTypo": "policies", "Duration": "a duration", "Date": "a date",
}

// cleanYAMLError rewrites the decoder's messages, which name Go types, into the document's
// terms: `line 7: unknown field "trustServer" in trust`.
func cleanYAMLError(msg string) string {
	msg = strings.TrimPrefix(msg, "yaml: unmarshal errors:\n  ")
	msg = strings.ReplaceAll(msg, "\n  ", "; ")
	msg = unknownFieldRE.ReplaceAllStringFunc(msg, func(s string) string {
		m := unknownFieldRE.FindStringSubmatch(s)
		return fmt.Sprintf("unknown field %q in %s", m[1], yamlTypeNames[m[2]])
	})
	msg = dupFieldRE.ReplaceAllStringFunc(msg, func(s string) string {
		m := dupFieldRE.FindStringSubmatch(s)
		return fmt.Sprintf("field %q set twice in %s", m[1], yamlTypeNames[m[2]])
	})
	msg = goTypeRE.ReplaceAllStringFunc(msg, func(s string) string {
		if n, ok := yamlTypeNames[strings.TrimPrefix(s, "policy.")]; ok {
			return n
		}
		return s
	})
	// Quoted scalars may hold line breaks; an error stays on one log line.
	return strings.NewReplacer("\n", `\n`, "\r", `\r`).Replace(msg)
}

func (d *yamlDoc) policy() (Policy, error) {
	if d.Items != nil {
		return Policy{}, fmt.Errorf("items belong to a List, not to kind %q", d.Kind)
	}
	switch d.APIVersion {
	case APIVersionSeed, APIVersionPortieris, APIVersionPullguard:
	case "":
		return Policy{}, errors.New("apiVersion is required")
	default:
		return Policy{}, fmt.Errorf("unsupported apiVersion %q (want %s, %s or %s)", d.APIVersion, APIVersionPullguard, APIVersionSeed, APIVersionPortieris)
	}
	p := Policy{Kind: Kind(d.Kind)}
	if d.Metadata != nil {
		p.Name, p.Namespace = d.Metadata.Name, d.Metadata.Namespace
	}
	if d.Spec != nil {
		p.Mode = Mode(d.Spec.Mode)
		p.Rules = make([]Rule, 0, len(d.Spec.Repositories))
		for i, r := range d.Spec.Repositories {
			rule, err := r.rule(i)
			if err != nil {
				return Policy{}, fmt.Errorf("spec.repositories[%d] %q: %w", i, r.Name, err)
			}
			p.Rules = append(p.Rules, rule)
		}
	}
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	return p, nil
}

func (r *yamlRepo) rule(i int) (Rule, error) {
	if r.Policies != nil {
		return Rule{}, errors.New(`unknown field "policies" (did you mean "policy"? an empty "policies:" is tolerated for the seed's ibm-system policy, a value is not)`)
	}
	rule := Rule{Name: r.Name, Mode: Mode(r.Mode), FailOpen: r.FailOpen, Index: i}
	if r.Policy == nil {
		return rule, nil
	}
	if t := r.Policy.Trust; t != nil {
		rule.Checks.Trust.Enabled = t.Enabled
		for j, s := range t.SignerSecrets {
			if s.Name == "" {
				return Rule{}, fmt.Errorf("trust.signerSecrets[%d]: name is required", j)
			}
			rule.Checks.Trust.Signers = appendUnique(rule.Checks.Trust.Signers, s.Name)
		}
		for _, s := range t.Signers {
			rule.Checks.Trust.Signers = appendUnique(rule.Checks.Trust.Signers, s)
		}
	}
	if v := r.Policy.VA; v != nil {
		tv := TOMLVA(*v)
		rule.Checks.VA = tv.VA()
	}
	return rule, nil
}

func appendUnique(list []string, s string) []string {
	for _, v := range list {
		if v == s {
			return list
		}
	}
	return append(list, s)
}
