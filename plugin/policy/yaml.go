package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	yaml "go.yaml.in/yaml/v2"

	"github.com/pullguard/pullguard/plugin/policy/v1beta1"
)

// API versions whose ImagePolicy / ClusterImagePolicy documents load. All three decode into
// the same spec (v1beta1.ImagePolicySpec): pullguard's own schema accepts the other two's
// fields, so a policy written for either migrates by changing its apiVersion line.
const (
	APIVersionSeed      = "securityenforcement.admission.cloud.ibm.com/v1beta1"
	APIVersionPortieris = "portieris.cloud.ibm.com/v1"
	APIVersionPullguard = v1beta1.APIVersion
)

// MaxPolicyFileBytes bounds one policy file (and ParseYAML's input).
const MaxPolicyFileBytes = 4 << 20

// yamlDoc is a policy document, decoded strictly: an unknown key at the top or in the spec is
// an error, never ignored, because an ignored key could be a check the author expects to be
// enforced. Only the envelope is declared here; the spec is the API's own type.
type yamlDoc struct {
	APIVersion string                   `yaml:"apiVersion"`
	Kind       string                   `yaml:"kind"`
	Metadata   *yamlMeta                `yaml:"metadata"`
	Spec       *v1beta1.ImagePolicySpec `yaml:"spec"`
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
	unknownFieldRE = regexp.MustCompile(`field (\S+) not found in type (?:policy|v1beta1)\.(\w+)`)
	dupFieldRE     = regexp.MustCompile(`field (\S+) already set in type (?:policy|v1beta1)\.(\w+)`)
	goTypeRE       = regexp.MustCompile(`\b(?:policy|v1beta1)\.(\w+)`)
)

// yamlTypeNames names the Go types the decoder mentions the way the document calls them.
var yamlTypeNames = map[string]string{
	"yamlDoc": "a policy document", "yamlMeta": "metadata", "ImagePolicySpec": "spec",
	"Repository": "a repositories entry", "RepositoryPolicy": "policy", "Trust": "trust",
	"SignerSecret": "a signerSecrets entry", "SignerName": "a signer name", "VA": "va",
	"Exemption": "an allow entry", "NamespaceName": "a namespace name",
	"Vulnerability": "vulnerability", "ICCRVA": "ICCRVA", "MisspeltPolicy": "policies",
	"Unsupported": "simple", "Duration": "a duration", "Date": "a date", "Mode": "a mode",
	"Running": "a running value",
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
		if n, ok := yamlTypeNames[goTypeRE.FindStringSubmatch(s)[1]]; ok {
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
	var name, namespace string
	if d.Metadata != nil {
		name, namespace = d.Metadata.Name, d.Metadata.Namespace
	}
	return FromSpec(Kind(d.Kind), name, namespace, "spec.", d.Spec)
}
