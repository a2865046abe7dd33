package installer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Prober asks the node's sockets what install needs to know. CRIProber is
// the real one; tests serve fakes on the same sockets.
type Prober interface {
	// Runtime asks the container runtime behind a CRI socket its name and
	// version.
	Runtime(ctx context.Context, socketPath string) (RuntimeInfo, error)
	// Ready waits until pullguard is ready: its admin socket answers
	// /readyz with 200 (containerd answers and, in enforce mode, pullguard's
	// NRI plugin is registered with it) and its CRI socket answers an image
	// service call, the path kubelet's image calls will take.
	Ready(ctx context.Context, adminSocket, criSocket string) error
}

// RuntimeInfo is the runtime's answer to CRI Version.
type RuntimeInfo struct {
	Name    string // runtime_name, "containerd"
	Version string // runtime_version, e.g. "v2.4.2"
}

// CRIProber is the real Prober.
type CRIProber struct {
	// Interval between readiness attempts; zero means 500ms.
	Interval time.Duration
}

// Runtime calls runtime.v1 Version on the runtime's socket. The running
// runtime's own answer is what install decides on: a binary's --version
// can be another build than the one running, and the socket kubelet uses
// is the runtime pullguard will guard.
func (p CRIProber) Runtime(ctx context.Context, socketPath string) (RuntimeInfo, error) {
	conn, err := grpc.NewClient("unix://"+socketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return RuntimeInfo{}, fmt.Errorf("dial %s: %w", socketPath, err)
	}
	defer conn.Close()
	v, err := runtimeapi.NewRuntimeServiceClient(conn).Version(ctx, &runtimeapi.VersionRequest{Version: "v1"})
	if err != nil {
		return RuntimeInfo{}, fmt.Errorf("CRI Version on %s: %w", socketPath, err)
	}
	return RuntimeInfo{Name: v.GetRuntimeName(), Version: v.GetRuntimeVersion()}, nil
}

// Ready polls until pullguard is ready or ctx ends. Runtime calls cannot
// tell: pullguard's CRI socket serves the image service only.
func (p CRIProber) Ready(ctx context.Context, adminSocket, criSocket string) error {
	interval := p.Interval
	if interval <= 0 {
		interval = 500 * time.Millisecond
	}
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", adminSocket)
		},
		DisableKeepAlives: true,
	}}
	conn, err := grpc.NewClient("unix://"+criSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial %s: %w", criSocket, err)
	}
	defer conn.Close()
	images := runtimeapi.NewImageServiceClient(conn)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var last error
	for {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := readyz(attempt, hc)
		if err == nil {
			if _, err = images.ImageFsInfo(attempt, &runtimeapi.ImageFsInfoRequest{}); err != nil {
				err = fmt.Errorf("ImageFsInfo on %s: %w", criSocket, err)
			}
		}
		cancel()
		if err == nil {
			return nil
		}
		// An attempt cut short by the end of the wait says less than the
		// answer before it.
		if ctx.Err() == nil || last == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last answer: %v)", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// readyz asks the admin socket's /readyz once.
func readyz(ctx context.Context, hc *http.Client) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://pullguard/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("GET /readyz: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/readyz: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// minContainerd is the first containerd whose NRI has the default
// validator with required_plugins: older ones start containers while
// pullguard's plugin is absent.
var minContainerd = [2]int{2, 2}

// ErrNoNRIValidation is returned (wrapped) when the runtime cannot be made
// to refuse containers while pullguard is absent.
var ErrNoNRIValidation = errors.New("the container runtime has no NRI validation pullguard can require")

// checkRuntime refuses a runtime without NRI's default validator.
func checkRuntime(rt RuntimeInfo) error {
	pullOnly := "install with --pull-only to enforce at pull time only (images already on the node, loaded or re-tagged with ctr, " +
		"pulled for another namespace, image volumes and the sandbox image then start unchecked)"
	if rt.Name != "containerd" {
		return fmt.Errorf("%w: it is %q %s, not containerd %d.%d or later; %s", ErrNoNRIValidation, rt.Name, rt.Version, minContainerd[0], minContainerd[1], pullOnly)
	}
	major, minor, ok := parseVersion(rt.Version)
	if !ok {
		return fmt.Errorf("%w: containerd reports version %q, which install cannot read; %s", ErrNoNRIValidation, rt.Version, pullOnly)
	}
	if major < minContainerd[0] || major == minContainerd[0] && minor < minContainerd[1] {
		return fmt.Errorf("%w: containerd %s is older than %d.%d, whose NRI default validator refuses containers while a required plugin is absent; upgrade containerd, or %s",
			ErrNoNRIValidation, rt.Version, minContainerd[0], minContainerd[1], pullOnly)
	}
	return nil
}

// parseVersion reads major.minor from "v2.4.2", "2.4.2+unknown",
// "2.2.0-rc.1".
func parseVersion(v string) (major, minor int, ok bool) {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	num := func(s string) (int, bool) {
		end := 0
		for end < len(s) && s[end] >= '0' && s[end] <= '9' {
			end++
		}
		n, err := strconv.Atoi(s[:end])
		return n, err == nil
	}
	major, ok1 := num(parts[0])
	minor, ok2 := num(parts[1])
	return major, minor, ok1 && ok2
}
