package policy

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// TOMLFile is a TOML policy file in a policy directory: only [[policies]] tables, with the
// same schema as the inline [[policies]] of the node config.
type TOMLFile struct {
	Policies []TOMLPolicy `toml:"policies"`
}

// TOMLPolicy is one [[policies]] table. Keys are snake_case like the rest of the node config.
type TOMLPolicy struct {
	Kind         string     `toml:"kind"`
	Name         string     `toml:"name"`
	Namespace    string     `toml:"namespace"`
	Mode         string     `toml:"mode"`
	Repositories []TOMLRule `toml:"repositories"`
}

// TOMLRule is one [[policies.repositories]] table.
type TOMLRule struct {
	Name     string      `toml:"name"`
	Mode     string      `toml:"mode"`
	FailOpen bool        `toml:"fail_open"`
	Policy   *TOMLChecks `toml:"policy"`
}

// TOMLChecks is [policies.repositories.policy]; absent means no checks.
type TOMLChecks struct {
	Trust *TOMLTrust `toml:"trust"`
	VA    *TOMLVA    `toml:"va"`
}

// TOMLTrust is [policies.repositories.policy.trust].
type TOMLTrust struct {
	Enabled bool     `toml:"enabled"`
	Signers []string `toml:"signers"`
}

// TOMLVA is [policies.repositories.policy.va]; unset knobs fall back to the node's [va].
type TOMLVA struct {
	Enabled             bool            `toml:"enabled"`
	MaxSeverity         *string         `toml:"max_severity"`
	IgnoreUnfixed       *bool           `toml:"ignore_unfixed"`
	Unscanned           *string         `toml:"unscanned"`
	MaxReportAge        *Duration       `toml:"max_report_age"`
	RequireSignedReport *bool           `toml:"require_signed_report"`
	Allow               []TOMLExemption `toml:"allow"`
}

// VA converts to the model.
func (v *TOMLVA) VA() VA {
	va := VA{
		Enabled:             v.Enabled,
		MaxSeverity:         v.MaxSeverity,
		IgnoreUnfixed:       v.IgnoreUnfixed,
		Unscanned:           v.Unscanned,
		RequireSignedReport: v.RequireSignedReport,
	}
	if v.MaxReportAge != nil {
		d := time.Duration(*v.MaxReportAge)
		va.MaxReportAge = &d
	}
	for _, e := range v.Allow {
		va.Allow = append(va.Allow, e.Exemption())
	}
	return va
}

// TOMLExemption is one [[...va.allow]] table (also used by the node config's [[va.allow]], and
// by the YAML documents' va.allow, whose keys are the same).
type TOMLExemption struct {
	ID         string   `toml:"id" yaml:"id"`
	Expires    Date     `toml:"expires" yaml:"expires"`
	Namespaces []string `toml:"namespaces" yaml:"namespaces"`
}

// Exemption converts to the model.
func (e TOMLExemption) Exemption() Exemption {
	return Exemption{ID: e.ID, Expires: e.Expires.Time, Namespaces: e.Namespaces}
}

// Policy converts to the model and validates it; source is recorded as Policy.Source.
func (t *TOMLPolicy) Policy(source string) (Policy, error) {
	p := Policy{
		Kind:      Kind(t.Kind),
		Name:      t.Name,
		Namespace: t.Namespace,
		Source:    source,
		Mode:      Mode(t.Mode),
		Rules:     make([]Rule, 0, len(t.Repositories)),
	}
	for i, r := range t.Repositories {
		rule := Rule{Name: r.Name, Mode: Mode(r.Mode), FailOpen: r.FailOpen, Index: i}
		if c := r.Policy; c != nil {
			if c.Trust != nil {
				rule.Checks.Trust.Enabled = c.Trust.Enabled
				for _, s := range c.Trust.Signers {
					rule.Checks.Trust.Signers = appendUnique(rule.Checks.Trust.Signers, s)
				}
			}
			if c.VA != nil {
				rule.Checks.VA = c.VA.VA()
			}
		}
		p.Rules = append(p.Rules, rule)
	}
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
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
