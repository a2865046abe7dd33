package e2e

import (
	"fmt"
	"strings"
)

// Policy builders in the two formats pullguard loads: seed YAML files for the policy directory
// and inline TOML ([[policies]], notes/CONFIG_SCHEMA.md).

// rule is one repositories entry; no checks means admitted without checks.
type rule struct {
	name  string
	trust bool
	va    bool
}

// seedYAML renders a seed-format document (securityenforcement.admission.cloud.ibm.com/v1beta1).
// ns "" makes a ClusterImagePolicy.
func seedYAML(name, ns string, rules ...rule) string {
	var b strings.Builder
	kind := "ImagePolicy"
	if ns == "" {
		kind = "ClusterImagePolicy"
	}
	fmt.Fprintf(&b, "apiVersion: securityenforcement.admission.cloud.ibm.com/v1beta1\nkind: %s\nmetadata:\n  name: %s\n", kind, name)
	if ns != "" {
		fmt.Fprintf(&b, "  namespace: %s\n", ns)
	}
	if len(rules) == 0 {
		b.WriteString("spec:\n  repositories: []\n")
	} else {
		b.WriteString("spec:\n  repositories:\n")
	}
	for _, r := range rules {
		fmt.Fprintf(&b, "  - name: %q\n", r.name)
		if r.trust || r.va {
			fmt.Fprintf(&b, "    policy:\n      trust:\n        enabled: %t\n      va:\n        enabled: %t\n", r.trust, r.va)
		}
	}
	return b.String()
}

// inlineTOML renders a [[policies]] table; ns "" makes a ClusterImagePolicy.
func inlineTOML(name, ns string, rules ...rule) string {
	var b strings.Builder
	b.WriteString("[[policies]]\n")
	if ns == "" {
		fmt.Fprintf(&b, "kind = \"ClusterImagePolicy\"\nname = %q\n", name)
	} else {
		fmt.Fprintf(&b, "kind = \"ImagePolicy\"\nname = %q\nnamespace = %q\n", name, ns)
	}
	if len(rules) == 0 {
		b.WriteString("repositories = []\n")
	}
	for _, r := range rules {
		fmt.Fprintf(&b, "  [[policies.repositories]]\n  name = %q\n", r.name)
		if r.trust {
			b.WriteString("  [policies.repositories.policy.trust]\n  enabled = true\n")
		}
		if r.va {
			b.WriteString("  [policies.repositories.policy.va]\n  enabled = true\n")
		}
	}
	return b.String() + "\n"
}
