// Command pullguard is a CRI proxy that enforces image policies on the node.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "pullguard: not yet implemented")
	os.Exit(2)
}
