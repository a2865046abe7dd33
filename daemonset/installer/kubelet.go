package installer

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"reflect"
	"regexp"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/pullguard/pullguard/daemonset/hoststate"
)

// Layout names the kubelet setups the installer knows how to rewire.
const (
	LayoutKubeadm       = "kubeadm"        // kubeadm-flags.env (+ config.yaml)
	LayoutKubeletConfig = "kubelet-config" // a KubeletConfiguration file only
)

// ErrUnsupportedLayout is returned (wrapped, with advice) for nodes whose
// kubelet the installer does not rewire.
var ErrUnsupportedLayout = errors.New("unsupported kubelet layout")

// Host paths probed for kubelet's configuration.
const (
	KubeadmFlagsPath = "/var/lib/kubelet/kubeadm-flags.env"
	// DefaultKubeletRuntimeEndpoint is kubelet's own default when neither a
	// flag nor the config file names one.
	DefaultKubeletRuntimeEndpoint = "unix:///run/containerd/containerd.sock"
)

// KubeletConfigCandidates are probed in order when no path is given.
var kubeletConfigCandidates = []string{
	"/var/lib/kubelet/config.yaml",
	"/etc/kubernetes/kubelet/config.yaml",
	"/etc/kubernetes/kubelet-config.yaml",
	"/etc/kubernetes/kubelet.yaml",
}

const (
	keyRuntime  = "containerRuntimeEndpoint"
	keyImage    = "imageServiceEndpoint"
	flagRuntime = "--container-runtime-endpoint"
	flagImage   = "--image-service-endpoint"
)

// maxKubeletFileBytes bounds kubelet files we read; real ones are a few KiB.
const maxKubeletFileBytes = 1 << 20

// hostFile is one of kubelet's or containerd's files as found on the host
// before install changes it.
type hostFile struct {
	hostPath string
	data     []byte
	mode     fs.FileMode
	// absent is true for a file install creates.
	absent bool
}

// kubeletSetup is what the installer learnt about a node's kubelet.
type kubeletSetup struct {
	layout string
	config *hostFile // KubeletConfiguration, may be nil for kubeadm
	flags  *hostFile // kubeadm-flags.env, nil for kubelet-config

	runtimeEndpoint string // effective, as kubelet would use it
	imageEndpoint   string
}

// inspectKubelet detects the node's kubelet layout without changing anything.
// configOverride is a host path of a KubeletConfiguration to use instead of
// probing.
func inspectKubelet(root hoststate.Root, configOverride string) (*kubeletSetup, error) {
	for _, d := range []struct{ dir, name, sock string }{
		{"/etc/rancher/k3s", "k3s", "/run/k3s/containerd/containerd.sock"},
		{"/etc/rancher/rke2", "rke2", "/run/k3s/containerd/containerd.sock"},
		{"/var/lib/rancher/k3s", "k3s", "/run/k3s/containerd/containerd.sock"},
		{"/var/lib/rancher/rke2", "rke2", "/run/k3s/containerd/containerd.sock"},
	} {
		if _, err := os.Stat(root.Path(d.dir)); err == nil {
			return nil, fmt.Errorf("%w: %s detected (%s exists): its kubelet and containerd are embedded in the %s binary and configured through /etc/rancher/%s/config.yaml "+
				"and its own containerd config template; pullguard-agent install does not rewire them. Wiring by hand takes, in this order: [server].upstream = \"unix://%s\" "+
				"in pullguard's config, containerd's NRI default validator requiring pullguard, pullguard started and ready, "+
				"then kubelet's image service endpoint (not its runtime endpoint) set to unix:///run/pullguard/pullguard.sock",
				ErrUnsupportedLayout, d.name, d.dir, d.name, d.name, d.sock)
		}
	}

	s := &kubeletSetup{}
	flags, err := readHostFile(root, KubeadmFlagsPath, maxKubeletFileBytes)
	if err != nil {
		return nil, err
	}
	s.flags = flags
	candidates := kubeletConfigCandidates
	if configOverride != "" {
		candidates = []string{configOverride}
	}
	for _, c := range candidates {
		f, err := readHostFile(root, c, maxKubeletFileBytes)
		if err != nil {
			return nil, err
		}
		if f != nil {
			s.config = f
			break
		}
		if configOverride != "" {
			return nil, fmt.Errorf("kubelet config %s does not exist", configOverride)
		}
	}
	switch {
	case s.flags != nil:
		s.layout = LayoutKubeadm
	case s.config != nil:
		s.layout = LayoutKubeletConfig
	default:
		return nil, fmt.Errorf("%w: found neither %s nor a KubeletConfiguration file (%s); pass --kubelet-config with the file kubelet's --config flag names",
			ErrUnsupportedLayout, KubeadmFlagsPath, strings.Join(kubeletConfigCandidates, ", "))
	}

	var cfgRuntime, cfgImage, flRuntime, flImage string
	if s.config != nil {
		m, err := parseKubeletConfig(s.config.data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.config.hostPath, err)
		}
		cfgRuntime, _ = m[keyRuntime].(string)
		cfgImage, _ = m[keyImage].(string)
	}
	if s.flags != nil {
		flRuntime = flagValue(s.flags.data, flagRuntime)
		flImage = flagValue(s.flags.data, flagImage)
	}
	// Flags win over the config file, field by field, as in kubelet.
	s.runtimeEndpoint = firstNonEmpty(flRuntime, cfgRuntime, DefaultKubeletRuntimeEndpoint)
	s.imageEndpoint = firstNonEmpty(flImage, cfgImage, s.runtimeEndpoint)
	return s, nil
}

// readHostFile reads a host file; nil when it does not exist.
func readHostFile(root hoststate.Root, hostPath string, limit int64) (*hostFile, error) {
	p := root.Path(hostPath)
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", hostPath, err)
	}
	data, err := hoststate.ReadBounded(p, limit)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", hostPath, err)
	}
	return &hostFile{hostPath: hostPath, data: data, mode: fi.Mode().Perm()}, nil
}

func parseKubeletConfig(data []byte) (map[string]any, error) {
	m := map[string]any{}
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("parse KubeletConfiguration: %w", err)
	}
	if k, _ := m["kind"].(string); k != "KubeletConfiguration" {
		return nil, fmt.Errorf("not a KubeletConfiguration (kind %q)", k)
	}
	return m, nil
}

func firstNonEmpty(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}

// sameEndpoint compares endpoints the way a node resolves them: the unix://
// scheme is optional and /var/run is /run.
func sameEndpoint(a, b string) bool { return normEndpoint(a) == normEndpoint(b) }

func normEndpoint(e string) string {
	e = strings.TrimPrefix(e, "unix://")
	e = path.Clean(e)
	if rest, ok := strings.CutPrefix(e, "/var/run/"); ok {
		e = "/run/" + rest
	}
	return e
}

// flagRE matches one flag with its value, either --flag=value or --flag value,
// inside kubeadm-flags.env's quoted KUBELET_KUBEADM_ARGS.
func flagRE(flag string) *regexp.Regexp {
	return regexp.MustCompile(`(^|[\s"'])` + regexp.QuoteMeta(flag) + `(=|\s+)([^\s"']+)`)
}

func flagValue(data []byte, flag string) string {
	m := flagRE(flag).FindSubmatch(data)
	if m == nil {
		return ""
	}
	return string(m[3])
}

var argsLine = regexp.MustCompile(`(?m)^(KUBELET_KUBEADM_ARGS=)(["']?)(.*?)(["']?)$`)

// setFlag sets flag to value in kubeadm-flags.env, adding it to
// KUBELET_KUBEADM_ARGS when absent, and touches nothing else.
func setFlag(data []byte, flag, value string) ([]byte, error) {
	re := flagRE(flag)
	if re.Match(data) {
		return re.ReplaceAll(data, []byte("${1}"+flag+"="+value)), nil
	}
	if !argsLine.Match(data) {
		return nil, fmt.Errorf("no KUBELET_KUBEADM_ARGS line to add %s to", flag)
	}
	done := false
	return argsLine.ReplaceAllFunc(data, func(line []byte) []byte {
		if done {
			return line
		}
		done = true
		m := argsLine.FindSubmatch(line)
		args := strings.TrimSpace(string(m[3]))
		if args != "" {
			args += " "
		}
		return []byte(string(m[1]) + string(m[2]) + args + flag + "=" + value + string(m[4]))
	}), nil
}

// setConfigKey sets a top-level string key in a KubeletConfiguration with a
// one-line textual edit, keeping comments and order. The edit is verified by
// parsing: the key has the new value and every other key is unchanged.
func setConfigKey(data []byte, key, value string) ([]byte, error) {
	before, err := parseKubeletConfig(data)
	if err != nil {
		return nil, err
	}
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(key) + `[ \t]*:.*$`)
	line := key + ": " + value
	var out []byte
	if re.Match(data) {
		out = re.ReplaceAllLiteral(data, []byte(line))
	} else {
		out = append([]byte{}, data...)
		if len(out) > 0 && out[len(out)-1] != '\n' {
			out = append(out, '\n')
		}
		out = append(out, line+"\n"...)
	}
	after, err := parseKubeletConfig(out)
	if err != nil {
		return nil, fmt.Errorf("edited KubeletConfiguration no longer parses: %w", err)
	}
	if got, _ := after[key].(string); got != value {
		return nil, fmt.Errorf("could not set %s textually (found %q after the edit)", key, got)
	}
	want := maps.Clone(before)
	want[key] = value
	if !reflect.DeepEqual(want, after) {
		return nil, fmt.Errorf("setting %s would change other fields of the KubeletConfiguration; edit it by hand", key)
	}
	return out, nil
}

// plannedEdit is a host file's new content, not yet written.
type plannedEdit struct {
	file *hostFile
	data []byte
}

// planImageEndpoint computes the edit that makes kubelet use endpoint for
// its image service, and only for that: the runtime endpoint stays on
// containerd. The flag goes into kubeadm-flags.env when the flags already
// name an endpoint (flags win over the config file) or there is no config
// file; otherwise imageServiceEndpoint goes into the KubeletConfiguration.
// Nothing is written.
func (s *kubeletSetup) planImageEndpoint(endpoint string) ([]plannedEdit, error) {
	useFlags := s.flags != nil &&
		(s.config == nil || flagValue(s.flags.data, flagRuntime) != "" || flagValue(s.flags.data, flagImage) != "")
	f := s.config
	var (
		data []byte
		err  error
	)
	if useFlags {
		f = s.flags
		data, err = setFlag(f.data, flagImage, endpoint)
	} else {
		data, err = setConfigKey(f.data, keyImage, endpoint)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.hostPath, err)
	}
	if string(data) == string(f.data) {
		return nil, nil
	}
	return []plannedEdit{{f, data}}, nil
}
