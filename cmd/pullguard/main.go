// Command pullguard is the node daemon: the CRI image service kubelet pulls
// through, and the NRI validator containerd requires for every container it
// creates, deciding each image on the policy of the pod's namespace. It links
// no Kubernetes client: what needs the API is pullguard-agent's. Subcommands
// are thin: flags in, packages do the work.
package main

import (
	"io"

	"github.com/pullguard/pullguard/cmd/internal/cli"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func program() *cli.Program {
	return &cli.Program{
		Name:    "pullguard",
		Summary: "node-level image enforcement: the CRI image service and containerd's NRI validator",
		Version: version,
		Commands: map[string]cli.Command{
			"serve":           {Run: runServe, Summary: "run the image service and the NRI plugin (pullguard serve --config FILE)"},
			"check":           {Run: runCheck, Summary: "decide on an image offline (pullguard check --config FILE --namespace NS IMAGE)"},
			"validate-config": {Run: runValidateConfig, Summary: "check a node config file and its policies (pullguard validate-config FILE)"},
			"status":          {Run: runStatus, Summary: "list the running containers and pullguard's verdict on each (exit 1 if any is not admitted)"},
		},
		Order: []string{"serve", "check", "validate-config", "status"},
	}
}

func main() { program().Main() }

// run runs the program with args (tests).
func run(args []string, stdout, stderr io.Writer) int { return program().Run(args, stdout, stderr) }
