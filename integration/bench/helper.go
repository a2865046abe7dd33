package main

// helperProcess runs this program as one of the processes the benchmarks start beside the
// measured ones, when args name one: the byte relay (-relay-serve SOCK -relay-upstream SOCK) or
// the trivial NRI validator (-nri-stub SOCK). The `go run` program and the test binary both start
// themselves again this way. It reports whether args named a helper.
func helperProcess(args []string) (bool, error) {
	switch {
	case len(args) == 4 && args[0] == "-relay-serve" && args[2] == "-relay-upstream":
		return true, serveRelay(args[1], args[3])
	case len(args) == 2 && args[0] == "-nri-stub":
		return true, serveNRIStub(args[1])
	}
	return false, nil
}
