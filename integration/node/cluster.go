package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pullguard/pullguard/integration/kube"
)

// Identities of the control plane's programs: RBAC's bootstrap policy binds these user names to
// what each needs, as in a kubeadm cluster.
const (
	controllerManagerUser = "system:kube-controller-manager"
	schedulerUser         = "system:kube-scheduler"
)

// Cluster is the control plane: etcd and kube-apiserver (integration/kube) plus
// kube-controller-manager (DaemonSets, Deployments, service accounts, kube-root-ca.crt, node
// lifecycle) and kube-scheduler (every pod but the DaemonSet's is scheduled by it).
type Cluster struct {
	*kube.Server
	Admin       *kubernetes.Clientset
	controllers *process
	scheduler   *process
}

// StartCluster starts the control plane under dir and waits until the controllers are at work
// (the default namespace's service account exists).
func StartCluster(ctx context.Context, tools Tools, dir string) (_ *Cluster, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	srv, err := kube.Start(ctx, tools.Kube, kube.Options{
		Dir:   dir,
		Users: map[string][]string{controllerManagerUser: nil, schedulerUser: nil},
		Nodes: true,
	})
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	c := &Cluster{Server: srv}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	rc, err := srv.Config(kube.AdminUser)
	if err != nil {
		return nil, err
	}
	if c.Admin, err = kubernetes.NewForConfig(rc); err != nil {
		return nil, fmt.Errorf("start cluster: admin client: %w", err)
	}
	f := func(n string) string { return filepath.Join(dir, n) }
	for user, file := range map[string]string{controllerManagerUser: "kcm.kubeconfig", schedulerUser: "scheduler.kubeconfig"} {
		kc, err := srv.Kubeconfig(user)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(f(file), kc, 0o600); err != nil {
			return nil, fmt.Errorf("start cluster: %w", err)
		}
	}
	// No serving ports (--secure-port=0): nothing here scrapes them, and fixed ports would
	// collide with other tests on the machine.
	c.controllers, err = startProcess("kube-controller-manager", f("kube-controller-manager.log"), nil, syscall.SIGKILL,
		tools.ControllerManager,
		"--kubeconfig", f("kcm.kubeconfig"),
		"--secure-port=0", "--leader-elect=false",
		// Each controller acts as its own service account, as kubeadm runs it.
		"--use-service-account-credentials=true",
		"--service-account-private-key-file", f("sa.key"),
		"--root-ca-file", f("ca.crt"),
		"-v", "1")
	if err != nil {
		return nil, err
	}
	c.scheduler, err = startProcess("kube-scheduler", f("kube-scheduler.log"), nil, syscall.SIGKILL,
		tools.Scheduler, "--kubeconfig", f("scheduler.kubeconfig"), "--secure-port=0", "--leader-elect=false", "-v", "1")
	if err != nil {
		return nil, err
	}
	if err := poll(ctx, 60*time.Second, "the controllers create the default service account", func(ctx context.Context) error {
		if c.controllers.exited() {
			return fmt.Errorf("%w: kube-controller-manager exited:\n%s", errStop, c.controllers.logTail(3000))
		}
		if c.scheduler.exited() {
			return fmt.Errorf("%w: kube-scheduler exited:\n%s", errStop, c.scheduler.logTail(3000))
		}
		_, err := c.Admin.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	return c, nil
}

// Stop ends the controllers, then the API server and etcd.
func (c *Cluster) Stop() {
	c.scheduler.stop(syscall.SIGTERM, 10*time.Second)
	c.controllers.stop(syscall.SIGTERM, 10*time.Second)
	c.Server.Stop()
}
