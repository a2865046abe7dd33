package policy

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/pullguard/pullguard/plugin/policy/v1beta1"
)

// TOMLFile is a TOML policy file in a policy directory: only [[policies]] tables, with the
// same schema as the inline [[policies]] of the node config.
type TOMLFile struct {
	Policies []TOMLPolicy `toml:"policies"`
}

// TOMLPolicy is one [[policies]] table: the document's envelope (kind, name, namespace) and,
// flattened beside it, the API's spec under its snake_case toml names. Keys the TOML form
// never had (Portieris' and signerSecrets) are tagged "-" there, so they are unknown keys here.
type TOMLPolicy struct {
	Kind      string `toml:"kind"`
	Name      string `toml:"name"`
	Namespace string `toml:"namespace"`
	v1beta1.ImagePolicySpec
}

// Policy converts to the model and validates it; source is recorded as Policy.Source.
func (t *TOMLPolicy) Policy(source string) (Policy, error) {
	p, err := FromSpec(Kind(t.Kind), t.Name, t.Namespace, "", &t.ImagePolicySpec)
	if err != nil {
		return Policy{}, err
	}
	p.Source = source
	return p, nil
}

// ParseTOML reads a TOML policy file. Unknown keys are errors naming the key; syntax and type
// errors carry the line. Each policy's Source is "source#policies[i]".
func ParseTOML(data []byte, source string) ([]Policy, error) {
	if len(data) > MaxPolicyFileBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", source, MaxPolicyFileBytes)
	}
	var f TOMLFile
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, TOMLError(err))
	}
	if err := UndecodedError(md); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	out := make([]Policy, 0, len(f.Policies))
	for i := range f.Policies {
		src := fmt.Sprintf("%s#policies[%d]", source, i)
		p, err := f.Policies[i].Policy(src)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// UndecodedError reports keys the TOML decoder found but nothing consumed, i.e. unknown keys.
// Only the outermost unknown key is named: for an unknown table "[servr]" that is "servr",
// not every key inside it.
func UndecodedError(md toml.MetaData) error {
	keys := md.Undecoded()
	if len(keys) == 0 {
		return nil
	}
	unknown := map[string]bool{}
	for _, k := range keys {
		unknown[k.String()] = true
	}
	var names []string
	for _, k := range keys {
		outer := true
		for i := 1; i < len(k); i++ {
			if unknown[k[:i].String()] {
				outer = false
				break
			}
		}
		if outer {
			names = append(names, k.String())
		}
	}
	sort.Strings(names)
	if len(names) == 1 {
		return fmt.Errorf("unknown key %q", names[0])
	}
	return fmt.Errorf("unknown keys %q", names)
}

// TOMLError keeps the decoder's one-line message, which names the line and the last key,
// without its "toml: " prefix (the caller prefixes the file name).
func TOMLError(err error) error {
	return errors.New(strings.TrimPrefix(err.Error(), "toml: "))
}
