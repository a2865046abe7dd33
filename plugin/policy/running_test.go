package policy

import (
	"strings"
	"testing"
	"time"
)

// running and evictAfter resolve per entry: the entry's value, else the policy's, else report
// and 5m; YAML documents and TOML tables mean the same.
func TestRunningResolution(t *testing.T) {
	type resolved struct {
		running Running
		after   time.Duration
	}
	tests := []struct {
		name string
		yaml string // the spec, under "spec:"
		toml string // the same policy's keys, after kind and name
		want []resolved
	}{
		{
			name: "defaults",
			yaml: "{repositories: [{name: a/*}, {name: b/*}]}",
			toml: "[[policies.repositories]]\nname = \"a/*\"\n[[policies.repositories]]\nname = \"b/*\"\n",
			want: []resolved{{RunningReport, 5 * time.Minute}, {RunningReport, 5 * time.Minute}},
		},
		{
			name: "policy-wide values reach every entry",
			yaml: "{running: evict, evictAfter: 90s, repositories: [{name: a/*}, {name: b/*}]}",
			toml: "running = \"evict\"\nevict_after = \"90s\"\n[[policies.repositories]]\nname = \"a/*\"\n[[policies.repositories]]\nname = \"b/*\"\n",
			want: []resolved{{RunningEvict, 90 * time.Second}, {RunningEvict, 90 * time.Second}},
		},
		{
			name: "entries override each value on its own",
			yaml: "{running: evict, evictAfter: 90s, repositories: [{name: a/*, running: report}, {name: b/*, evictAfter: 1h}, {name: c/*}]}",
			toml: "running = \"evict\"\nevict_after = \"90s\"\n[[policies.repositories]]\nname = \"a/*\"\nrunning = \"report\"\n" +
				"[[policies.repositories]]\nname = \"b/*\"\nevict_after = \"1h\"\n[[policies.repositories]]\nname = \"c/*\"\n",
			want: []resolved{{RunningReport, 90 * time.Second}, {RunningEvict, time.Hour}, {RunningEvict, 90 * time.Second}},
		},
		{
			name: "an entry may evict under a reporting policy, after the default delay",
			yaml: "{repositories: [{name: a/*, running: evict}]}",
			toml: "[[policies.repositories]]\nname = \"a/*\"\nrunning = \"evict\"\n",
			want: []resolved{{RunningEvict, 5 * time.Minute}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ys, err := ParseYAML([]byte("apiVersion: pullguard.dev/v1beta1\nkind: ClusterImagePolicy\nmetadata: {name: c}\nspec: "+tc.yaml+"\n"), "p.yaml")
			if err != nil {
				t.Fatalf("yaml: %v", err)
			}
			ts, err := ParseTOML([]byte("[[policies]]\nkind = \"ClusterImagePolicy\"\nname = \"c\"\n"+tc.toml), "p.toml")
			if err != nil {
				t.Fatalf("toml: %v", err)
			}
			for form, ps := range map[string][]Policy{"yaml": ys, "toml": ts} {
				rules := ps[0].Rules
				if len(rules) != len(tc.want) {
					t.Fatalf("%s: %d rules", form, len(rules))
				}
				for i, w := range tc.want {
					if got := (resolved{rules[i].Running, rules[i].EvictAfter}); got != w {
						t.Errorf("%s: rule %d %q: %+v, want %+v", form, i, rules[i].Name, got, w)
					}
				}
			}
		})
	}
}

func TestRunningErrors(t *testing.T) {
	const head = "[[policies]]\nkind = \"ClusterImagePolicy\"\nname = \"c\"\n"
	for _, tc := range []struct{ doc, want string }{
		{head + "running = \"kill\"\n", `p.toml#policies[0]: running: unknown value "kill"`},
		{head + "evict_after = \"0s\"\n", "evictAfter: must be positive, got 0s"},
		{head + "[[policies.repositories]]\nname = \"*\"\nevict_after = \"-1m\"\n", `repositories[0] "*": evictAfter: must be positive, got -1m`},
		{head + "[[policies.repositories]]\nname = \"*\"\nevict_after = \"soon\"\n", "line 6"},
		{head + "[[policies.repositories]]\nname = \"*\"\nrunning = \"Report\"\n", `repositories[0] "*": running: unknown value "Report"`},
	} {
		if _, err := ParseTOML([]byte(tc.doc), "p.toml"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.doc, err, tc.want)
		}
	}
}

// Rules built in code leave running and evictAfter zero; the set gives them the defaults, and
// the model refuses values no document could produce.
func TestRunningInSet(t *testing.T) {
	s, err := NewSet([]Policy{{Kind: KindCluster, Name: "c", Rules: []Rule{{Name: "*"}, {Name: "a/*", Running: RunningEvict, EvictAfter: time.Second}}}}, "")
	if err != nil {
		t.Fatal(err)
	}
	r := s.Policies()[0].Rules
	if r[0].Running != RunningReport || r[0].EvictAfter != DefaultEvictAfter || r[1].Running != RunningEvict || r[1].EvictAfter != time.Second {
		t.Fatalf("rules %+v", r)
	}
	for _, bad := range []Rule{{Name: "*", Running: "kill"}, {Name: "*", EvictAfter: -time.Second}} {
		if _, err := NewSet([]Policy{{Kind: KindCluster, Name: "c", Rules: []Rule{bad}}}, ""); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
