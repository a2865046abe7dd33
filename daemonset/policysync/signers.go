package policysync

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/pullguard/pullguard/daemonset/hoststate"
)

// SignerSecrets makes the seed's signerSecrets work: for every signer name a policy object
// uses, a Secret of that name in pullguard's own namespace (and only there) supplies the
// signer's certificates, written as a trust store directory <Dir>/<name> on the node. A
// [[signers]] entry of the node config names that directory as its trust_store; who may sign
// is still decided by whoever may write Secrets in pullguard's namespace and the node config.
type SignerSecrets struct {
	Client    corev1client.SecretsGetter
	Namespace string // pullguard's namespace; never another
	Dir       string // e.g. /host/etc/pullguard/signers
	// Refresh is how often a Secret is fetched again; default 5m. A name seen for the first
	// time is fetched at once.
	Refresh time.Duration
}

// Bounds on what a Secret can make the agent write.
const (
	maxSignerNames = 64
	maxCertsBytes  = 1 << 20
)

// signerFetch remembers when a signer's Secret was last fetched.
type signerFetch struct {
	at time.Time
}

// signerNamesOf collects the signer names of a spec, valid or not: the trust store must be able
// to exist before the node config defines the signer (the config is checked against it).
func signerNamesOf(spec map[string]any, into map[string]bool) {
	repos, _ := spec["repositories"].([]any)
	for _, r := range repos {
		rm, _ := r.(map[string]any)
		pol, _ := rm["policy"].(map[string]any)
		trust, _ := pol["trust"].(map[string]any)
		secrets, _ := trust["signerSecrets"].([]any)
		for _, s := range secrets {
			if sm, ok := s.(map[string]any); ok {
				if n, ok := sm["name"].(string); ok && signerNameOK(n) {
					into[n] = true
				}
			}
		}
		names, _ := trust["signers"].([]any)
		for _, s := range names {
			if n, ok := s.(string); ok && signerNameOK(n) {
				into[n] = true
			}
		}
	}
}

func signerNameOK(n string) bool {
	if n == "" || len(n) > 253 || n == "." || n == ".." {
		return false
	}
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// syncSigners fetches the Secrets of the named signers that are due and writes their trust
// stores. A missing Secret or a failed fetch leaves the trust store on disk as it is: removing
// trust anchors because of a transient error would make the node deny signed images.
func (a *Agent) syncSigners(ctx context.Context, names map[string]bool) {
	ss := a.opts.SignerSecrets
	if ss == nil || len(names) == 0 {
		return
	}
	list := make([]string, 0, len(names))
	for n := range names {
		list = append(list, n)
	}
	slices.Sort(list)
	if len(list) > maxSignerNames {
		a.log.WarnContext(ctx, "too many signer names in policies; only the first are synced from Secrets", "names", len(list), "max", maxSignerNames)
		list = list[:maxSignerNames]
	}
	refresh := ss.Refresh
	if refresh <= 0 {
		refresh = 5 * time.Minute
	}
	for _, name := range list {
		if f, ok := a.signerFetched[name]; ok && time.Since(f.at) < refresh {
			continue
		}
		a.signerFetched[name] = signerFetch{at: time.Now()}
		sec, err := ss.Client.Secrets(ss.Namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue // the signer's trust store comes from elsewhere (node files, ConfigMap)
		}
		if err != nil {
			a.log.WarnContext(ctx, "reading a signer Secret failed; its trust store on the node stays as it is", "secret", ss.Namespace+"/"+name, "error", err.Error())
			delete(a.signerFetched, name)
			continue
		}
		files, err := certFiles(sec.Data)
		if err != nil {
			a.log.ErrorContext(ctx, "signer Secret REJECTED; its trust store on the node stays as it is", "secret", ss.Namespace+"/"+name, "error", err.Error())
			continue
		}
		changed, err := hoststate.SwapDir(filepath.Join(ss.Dir, name), files)
		if err != nil {
			a.log.ErrorContext(ctx, "writing a signer trust store failed", "signer", name, "error", err.Error())
			delete(a.signerFetched, name)
			continue
		}
		if changed {
			a.log.InfoContext(ctx, "signer trust store written from its Secret", "signer", name, "dir", filepath.Join(ss.Dir, name), "certificates", len(files))
		}
	}
}

// certFiles picks the certificate keys of a Secret (ca.crt, tls.crt is NOT taken: it is a
// serving certificate, not a trust anchor; *.pem, *.crt) and checks that each holds only X.509
// certificates. Private keys are never written.
func certFiles(data map[string][]byte) (map[string][]byte, error) {
	out := map[string][]byte{}
	total := 0
	for k, v := range data {
		if k == "tls.crt" || !(k == "ca.crt" || strings.HasSuffix(k, ".pem") || strings.HasSuffix(k, ".crt")) {
			continue
		}
		total += len(v)
		if total > maxCertsBytes {
			return nil, fmt.Errorf("certificates larger than %d bytes", maxCertsBytes)
		}
		if err := onlyCertificates(v); err != nil {
			return nil, fmt.Errorf("key %s: %w", k, err)
		}
		name := k
		if !strings.HasSuffix(name, ".pem") && !strings.HasSuffix(name, ".crt") {
			name += ".pem"
		}
		out[name] = v
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate keys (ca.crt, *.pem, *.crt)")
	}
	return out, nil
}

func onlyCertificates(b []byte) error {
	n := 0
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return fmt.Errorf("holds a %s block; only CERTIFICATE blocks are accepted", block.Type)
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %w", n+1, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("no PEM certificate")
	}
	if len(strings.TrimSpace(string(b))) != 0 {
		return errors.New("trailing data after the certificates")
	}
	return nil
}
