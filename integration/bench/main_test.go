package main

import (
	"fmt"
	"os"
	"testing"
)

// runSummary collects the benchmarks' figures for the table TestMain prints at the end.
var runSummary summaryRows

// runtimeName is the containerd the benchmarks ran against, as its CRI Version names it.
var runtimeName = "containerd"

// TestMain lets the test binary be the relay and the trivial NRI validator too (they start this
// program again, see helperProcess), and prints the summary of what the benchmarks measured.
func TestMain(m *testing.M) {
	if ok, err := helperProcess(os.Args[1:]); ok {
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	loadBefore := loadAverage()
	code := m.Run()
	if rows := runSummary.all(); len(rows) > 0 {
		writeSummary(os.Stdout, "Summary: creates and verified pulls, "+runtimeName, machineState(loadBefore), rows)
	}
	os.Exit(code)
}
