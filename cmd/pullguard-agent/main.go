// Command pullguard-agent is the DaemonSet's side of pullguard: it installs
// and uninstalls the node daemon as a host service, keeps the node's config
// in sync with the ConfigMaps, renders the policy custom resources onto the
// node, acts on running workloads the daemon no longer admits (Events,
// evictions) and builds the image. It is the only binary that talks to the
// Kubernetes API; the node daemon stays small.
package main

import (
	"github.com/pullguard/pullguard/cmd/internal/cli"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func program() *cli.Program {
	return &cli.Program{
		Name:    "pullguard-agent",
		Summary: "installs pullguard on a node and keeps it in sync with the cluster",
		Version: version,
		Commands: map[string]cli.Command{
			"install":     {Run: runInstall, Summary: "install pullguard as a host service, make containerd require its NRI plugin and point kubelet's image service at it"},
			"uninstall":   {Run: runUninstall, Summary: "restore kubelet's and containerd's configuration and remove pullguard from the host"},
			"sync":        {Run: runSync, Summary: "keep the host config in sync with a mounted ConfigMap"},
			"policy-sync": {Run: runPolicySync, Summary: "render ImagePolicy / ClusterImagePolicy objects into the node's policy directory"},
			"running":     {Run: runRunning, Summary: "report and evict running workloads whose image pullguard no longer admits"},
			"image":       {Run: runImage, Summary: "build pullguard's container image (both binaries) and push it"},
		},
		Order: []string{"install", "uninstall", "sync", "policy-sync", "running", "image"},
	}
}

func main() { program().Main() }
