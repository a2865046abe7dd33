package installer

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
)

func TestSetFlag(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"replace =", `KUBELET_KUBEADM_ARGS="--a=b --container-runtime-endpoint=unix:///x.sock --c=d"`,
			`KUBELET_KUBEADM_ARGS="--a=b --container-runtime-endpoint=E --c=d"`},
		{"replace space form", `KUBELET_KUBEADM_ARGS="--container-runtime-endpoint unix:///x.sock"`,
			`KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=E"`},
		{"add", "KUBELET_KUBEADM_ARGS=\"--a=b\"\n", "KUBELET_KUBEADM_ARGS=\"--a=b --container-runtime-endpoint=E\"\n"},
		{"add to empty", `KUBELET_KUBEADM_ARGS=""`, `KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=E"`},
		{"does not touch a longer flag", `KUBELET_KUBEADM_ARGS="--x-container-runtime-endpoint=q"`,
			`KUBELET_KUBEADM_ARGS="--x-container-runtime-endpoint=q --container-runtime-endpoint=E"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := setFlag([]byte(tc.in), flagRuntime, "E")
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
			if v := flagValue(got, flagRuntime); v != "E" {
				t.Errorf("flagValue after edit = %q", v)
			}
		})
	}
	if _, err := setFlag([]byte("OTHER=1\n"), flagRuntime, "E"); err == nil {
		t.Error("added a flag without a KUBELET_KUBEADM_ARGS line")
	}
}

func TestSetConfigKeyKeepsTheRest(t *testing.T) {
	out, err := setConfigKey([]byte(plainConfig), keyRuntime, "unix:///pg.sock")
	if err != nil {
		t.Fatal(err)
	}
	for _, keep := range []string{"# Managed by hand on this node.", "# the runtime", "serializeImagePulls: true"} {
		if !strings.Contains(string(out), keep) {
			t.Errorf("edit lost %q:\n%s", keep, out)
		}
	}
	// A nested key of the same name must not be mistaken for the top-level one.
	nested := "apiVersion: v1\nkind: KubeletConfiguration\nfoo:\n  containerRuntimeEndpoint: keep\n"
	out, err = setConfigKey([]byte(nested), keyRuntime, "E")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "  containerRuntimeEndpoint: keep") || !strings.HasSuffix(string(out), "containerRuntimeEndpoint: E\n") {
		t.Errorf("nested key touched:\n%s", out)
	}
	// JSON-form configs cannot be edited line-wise: refuse.
	if _, err := setConfigKey([]byte(`{"kind":"KubeletConfiguration","containerRuntimeEndpoint":"x"}`), keyRuntime, "E"); err == nil {
		t.Error("JSON config edited without verification")
	}
}

func FuzzSetConfigKey(f *testing.F) {
	f.Add(plainConfig, "unix:///run/pullguard/pullguard.sock")
	f.Add(kubeadmConfigNoEndpoint, "E")
	f.Add("kind: KubeletConfiguration\ncontainerRuntimeEndpoint: |\n  x\n", "E")
	f.Fuzz(func(t *testing.T, in, value string) {
		out, err := setConfigKey([]byte(in), keyRuntime, value)
		if err != nil {
			return
		}
		m, err := parseKubeletConfig(out)
		if err != nil || m[keyRuntime] != value {
			t.Fatalf("accepted edit gives %v (%v), want %q", m[keyRuntime], err, value)
		}
	})
}

func FuzzSetFlag(f *testing.F) {
	f.Add(kubeadmOldFlags, "unix:///run/pullguard/pullguard.sock")
	f.Add(kubeadmNewFlags, "E")
	f.Fuzz(func(t *testing.T, in, value string) {
		if value == "" || strings.ContainsAny(value, " \t\n\r\"'") {
			return // endpoints are single tokens
		}
		out, err := setFlag([]byte(in), flagRuntime, value)
		if err != nil {
			return
		}
		if got := flagValue(out, flagRuntime); got != value {
			t.Fatalf("after setFlag the flag reads %q, want %q\n%s", got, value, out)
		}
	})
}

func TestSystemdRunsSystemctlInHostNamespaces(t *testing.T) {
	var got [][]string
	s := Systemd{HostRoot: "/host", Run: func(ctx context.Context, name string, args ...string) ([]byte, error) {
		got = append(got, append([]string{name}, args...))
		return nil, nil
	}}
	ctx := context.Background()
	must(t, s.DaemonReload(ctx))
	must(t, s.Restart(ctx, KubeletUnit))
	want := [][]string{
		{"nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--", "systemctl", "daemon-reload"},
		{"nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--", "systemctl", "restart", "kubelet.service"},
	}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("argv = %v\nwant %v", got, want)
	}
}

func TestChrootRunnerFindsHostBinaries(t *testing.T) {
	if _, err := lookPathIn(t.TempDir(), "nsenter"); err == nil || !strings.Contains(err.Error(), "not found on the host") {
		t.Errorf("lookPathIn on an empty root: %v", err)
	}
	// With root "/" the runner runs the command directly; true(1) exists on
	// every machine these tests run on.
	if _, err := ChrootRunner("/")(context.Background(), "true"); err != nil {
		t.Errorf("run true: %v", err)
	}
}

func TestPlanImageEndpoint(t *testing.T) {
	const flagsOnlyImage = `KUBELET_KUBEADM_ARGS="--image-service-endpoint=unix:///run/containerd/containerd.sock"` + "\n"
	tests := []struct {
		name   string
		files  map[string]string
		file   string // the one file edited
		runtme string // kubelet's runtime endpoint, unchanged
	}{
		{"runtime flag: image flag beside it", map[string]string{KubeadmFlagsPath: kubeadmOldFlags, "/var/lib/kubelet/config.yaml": plainConfig},
			KubeadmFlagsPath, "unix:///var/run/containerd/containerd.sock"},
		{"no flag names an endpoint: the config file", map[string]string{KubeadmFlagsPath: kubeadmNewFlags, "/var/lib/kubelet/config.yaml": plainConfig},
			"/var/lib/kubelet/config.yaml", "unix:///run/containerd/containerd.sock"},
		{"flags file alone", map[string]string{KubeadmFlagsPath: kubeadmNewFlags},
			KubeadmFlagsPath, DefaultKubeletRuntimeEndpoint},
		{"an image flag already there wins over the config file", map[string]string{KubeadmFlagsPath: flagsOnlyImage, "/var/lib/kubelet/config.yaml": kubeadmConfigNoEndpoint},
			KubeadmFlagsPath, DefaultKubeletRuntimeEndpoint},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := node(t, tc.files)
			kub, err := inspectKubelet(root, "")
			if err != nil {
				t.Fatal(err)
			}
			edits, err := kub.planImageEndpoint(pgEndpoint)
			if err != nil {
				t.Fatal(err)
			}
			if len(edits) != 1 || edits[0].file.hostPath != tc.file {
				t.Fatalf("edits = %v, want one of %s", edits, tc.file)
			}
			must(t, os.WriteFile(root.Path(tc.file), edits[0].data, 0o640))
			rt, img := kubeletEndpoints(t, root, "")
			if rt != tc.runtme || img != pgEndpoint {
				t.Errorf("after the edit kubelet uses runtime %s, image %s", rt, img)
			}
		})
	}
}
