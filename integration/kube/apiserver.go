// Package kube runs a real Kubernetes API server (kube-apiserver + etcd, built from Go modules by
// integration/tools-kube/install.sh) on loopback for the tests of pullguard's custom resources and
// policy-sync agent. Clients authenticate with static bearer tokens; authorization is RBAC.
package kube

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// ErrBinariesMissing is wrapped when kube-apiserver or etcd has not been built.
var ErrBinariesMissing = errors.New("kube-apiserver/etcd missing: run `make tools` (bash integration/tools-kube/install.sh)")

// Binaries are the paths of the two programs.
type Binaries struct {
	APIServer string
	Etcd      string
}

// FindBinaries looks in $PULLGUARD_TOOLS_BIN, else <repo>/.tools/bin.
func FindBinaries() (Binaries, error) {
	dir := os.Getenv("PULLGUARD_TOOLS_BIN")
	if dir == "" {
		root, err := repoRoot()
		if err != nil {
			return Binaries{}, err
		}
		dir = filepath.Join(root, ".tools", "bin")
	}
	b := Binaries{APIServer: filepath.Join(dir, "kube-apiserver"), Etcd: filepath.Join(dir, "etcd")}
	var missing []string
	for _, p := range []string{b.APIServer, b.Etcd} {
		if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return Binaries{}, fmt.Errorf("%w: not found: %s", ErrBinariesMissing, strings.Join(missing, ", "))
	}
	return b, nil
}

// RepoRoot finds the pullguard repository root above the working directory.
func RepoRoot() (string, error) { return repoRoot() }

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repo root: %w", err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module github.com/pullguard/pullguard\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find repo root: not inside the pullguard repository")
		}
		dir = parent
	}
}

// Well-known users of the token file.
const (
	AdminUser = "admin" // in system:masters
	// AgentUser is the policy-sync agent's identity: the DaemonSet's ServiceAccount, so that the
	// RBAC shipped in daemonset/ is what the tests exercise.
	AgentUser = "system:serviceaccount:pullguard-system:pullguard"
)

// Server is a running etcd + kube-apiserver pair.
type Server struct {
	Dir     string
	URL     string
	caPEM   []byte
	caKey   *ecdsa.PrivateKey
	caCert  *x509.Certificate
	tokens  map[string]string // user -> token
	bins    Binaries
	opts    Options
	port    int
	etcdURL string
	etcd    *proc
	api     *proc
}

// proc is a started process; done closes when it has exited.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// Options for Start.
type Options struct {
	Dir string // scratch directory (certs, etcd data, logs); required
	// Users are extra token users; each gets a token and no groups unless given.
	Users map[string][]string
	// Nodes makes it the API server of a cluster with kubelets and controllers: the Node
	// authorizer before RBAC (kubelets are authorised as system:node:NAME, and NodeRestriction
	// admits what they write), the ServiceAccount admission plugin on (the controllers
	// create every namespace's default service account), and privileged pods allowed.
	Nodes bool
}

// Start launches etcd and kube-apiserver and waits until the API server is ready.
func Start(ctx context.Context, bins Binaries, opts Options) (*Server, error) {
	s := &Server{Dir: opts.Dir, bins: bins, opts: opts, tokens: map[string]string{}}
	if err := s.writeCredentials(opts.Users); err != nil {
		return nil, err
	}
	etcdPort, peerPort, apiPort, err := freePorts()
	if err != nil {
		return nil, err
	}
	s.port = apiPort
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	s.etcdURL = etcdURL
	etcd := exec.Command(bins.Etcd,
		"--name", "pg", "--data-dir", filepath.Join(s.Dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "pg="+peerURL, "--unsafe-no-fsync", "--log-level", "warn")
	if s.etcd, err = s.startLogged(etcd, "etcd.log"); err != nil {
		return nil, err
	}
	if err := waitTCP(ctx, "127.0.0.1:"+strconv.Itoa(etcdPort), 30*time.Second); err != nil {
		s.Stop()
		return nil, fmt.Errorf("etcd did not start: %w\n%s", err, s.logTail("etcd.log"))
	}
	s.URL = "https://127.0.0.1:" + strconv.Itoa(apiPort)
	if err := s.StartAPIServer(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// StartAPIServer (re)starts kube-apiserver on the same port; etcd keeps the data.
func (s *Server) StartAPIServer(ctx context.Context) error {
	f := func(n string) string { return filepath.Join(s.Dir, n) }
	authz, extra := "RBAC", []string{"--disable-admission-plugins", "ServiceAccount"}
	if s.opts.Nodes {
		// kubeadm's --allow-privileged: pullguard's installer runs privileged.
		authz, extra = "Node,RBAC", []string{"--allow-privileged=true"}
	}
	args := []string{
		"--etcd-servers", s.etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", strconv.Itoa(s.port),
		"--tls-cert-file", f("serving.crt"), "--tls-private-key-file", f("serving.key"),
		"--client-ca-file", f("ca.crt"),
		"--token-auth-file", f("tokens.csv"),
		"--authorization-mode", authz,
		"--service-account-issuer", "https://pullguard.test",
		"--service-account-key-file", f("sa.key"), "--service-account-signing-key-file", f("sa.key"),
		"--service-cluster-ip-range", "10.96.0.0/24",
		"--endpoint-reconciler-type", "none",
		"--enable-priority-and-fairness=false",
		"--cert-dir", f("certs"),
		"-v", "1"}
	api := exec.Command(s.bins.APIServer, append(args, extra...)...)
	var err error
	if s.api, err = s.startLogged(api, "kube-apiserver.log"); err != nil {
		return err
	}
	rc, err := s.Config(AdminUser)
	if err != nil {
		return err
	}
	rc.Timeout = 2 * time.Second
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("readiness client: %w", err)
	}
	client := cs.Discovery().RESTClient()
	deadline := time.Now().Add(90 * time.Second)
	for {
		res := client.Get().AbsPath("/readyz").Do(ctx)
		if res.Error() == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("kube-apiserver not ready: %v\n%s", res.Error(), s.logTail("kube-apiserver.log"))
		}
		select {
		case <-ctx.Done():
		case <-s.api.done:
			return fmt.Errorf("kube-apiserver exited: %v\n%s", res.Error(), s.logTail("kube-apiserver.log"))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// StopAPIServer ends kube-apiserver (etcd keeps running): an API server outage.
func (s *Server) StopAPIServer() {
	stop(s.api)
	s.api = nil
}

// Stop ends both processes.
func (s *Server) Stop() {
	stop(s.api)
	stop(s.etcd)
	s.api, s.etcd = nil, nil
}

func stop(p *proc) {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Config is a client config for a token user ("admin", AgentUser or one of Options.Users).
func (s *Server) Config(user string) (*rest.Config, error) {
	tok, ok := s.tokens[user]
	if !ok {
		return nil, fmt.Errorf("no token user %q", user)
	}
	return &rest.Config{
		Host:            s.URL,
		BearerToken:     tok,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.caPEM},
		QPS:             200,
		Burst:           400,
	}, nil
}

// CAPEM is the cluster CA: it signs the API server's serving certificate and the client
// certificates of ClientCert, and kube-apiserver trusts it for client certificates.
func (s *Server) CAPEM() []byte { return s.caPEM }

// Token is the bearer token of a token user.
func (s *Server) Token(user string) (string, error) {
	tok, ok := s.tokens[user]
	if !ok {
		return "", fmt.Errorf("no token user %q", user)
	}
	return tok, nil
}

// ClientCert issues a client certificate and its key (PEM) for user cn in groups orgs, signed
// by the cluster CA: what kubeadm gives a kubelet (system:node:NAME in system:nodes).
func (s *Server) ClientCert(cn string, orgs ...string) (certPEM, keyData []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("client key for %s: %w", cn, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: new(big.Int).SetBytes(randBytes(16)), Subject: pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.caCert, &key.PublicKey, s.caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("client certificate for %s: %w", cn, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM(key), nil
}

// Kubeconfig is a kubeconfig file for a token user, for the programs that take one.
func (s *Server) Kubeconfig(user string) ([]byte, error) {
	tok, err := s.Token(user)
	if err != nil {
		return nil, err
	}
	return KubeconfigYAML(s.URL, s.caPEM, fmt.Sprintf("token: %q", tok)), nil
}

// KubeconfigYAML is a kubeconfig with one cluster (server, CA) and one user whose credential is
// the given YAML line (`token: ...`, or client-certificate-data and client-key-data lines).
func KubeconfigYAML(server string, caPEM []byte, credential ...string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Config\nclusters:\n- name: pullguard\n  cluster:\n    server: %s\n", server)
	fmt.Fprintf(&b, "    certificate-authority-data: %s\n", base64.StdEncoding.EncodeToString(caPEM))
	b.WriteString("users:\n- name: user\n  user:\n")
	for _, c := range credential {
		fmt.Fprintf(&b, "    %s\n", c)
	}
	b.WriteString("contexts:\n- name: pullguard\n  context:\n    cluster: pullguard\n    user: user\ncurrent-context: pullguard\n")
	return []byte(b.String())
}

func (s *Server) startLogged(c *exec.Cmd, logName string) (*proc, error) {
	lf, err := os.OpenFile(filepath.Join(s.Dir, logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	c.Stdout, c.Stderr = lf, lf
	// Its own process group, so a test's end never leaves it orphaned with a terminal signal.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", c.Path, err)
	}
	p := &proc{cmd: c, done: make(chan struct{})}
	go func() { _ = c.Wait(); lf.Close(); close(p.done) }()
	return p, nil
}

// logTail returns the end of a log file, for failure messages.
func (s *Server) logTail(name string) string {
	b, err := os.ReadFile(filepath.Join(s.Dir, name))
	if err != nil {
		return ""
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return name + ":\n" + string(b)
}

func (s *Server) writeCredentials(users map[string][]string) error {
	caKey, caCert, caPEM, err := newCA()
	if err != nil {
		return err
	}
	s.caPEM, s.caKey, s.caCert = caPEM, caKey, caCert
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("serving cert: %w", err)
	}
	saKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	files := map[string][]byte{
		"ca.crt":      caPEM,
		"serving.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"serving.key": keyPEM(key),
		"sa.key":      keyPEM(saKey),
	}
	var tokens strings.Builder
	all := map[string][]string{AdminUser: {"system:masters"}, AgentUser: {"system:serviceaccounts", "system:serviceaccounts:pullguard-system"}}
	for u, g := range users {
		all[u] = g
	}
	i := 0
	for u, groups := range all {
		i++
		tok := fmt.Sprintf("token-%d-%x", i, randBytes(12))
		s.tokens[u] = tok
		fmt.Fprintf(&tokens, "%s,%s,uid-%d,\"%s\"\n", tok, u, i, strings.Join(groups, ","))
	}
	files["tokens.csv"] = []byte(tokens.String())
	if err := os.MkdirAll(filepath.Join(s.Dir, "certs"), 0o700); err != nil {
		return err
	}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(s.Dir, n), b, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", n, err)
		}
	}
	return nil
}

func newCA() (*ecdsa.PrivateKey, *x509.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pullguard test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	return key, cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func keyPEM(k *ecdsa.PrivateKey) []byte {
	der, _ := x509.MarshalECPrivateKey(k)
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func freePorts() (int, int, int, error) {
	var ports [3]int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, 0, 0, fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports[0], ports[1], ports[2], nil
}

func waitTCP(ctx context.Context, addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
