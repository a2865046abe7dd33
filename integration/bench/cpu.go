package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// processCPU is the CPU time all threads of pid have run so far, from the scheduler's
// nanosecond accounting (/proc/PID/task/*/schedstat). Unlike wall-clock latency it hardly
// depends on how busy the rest of the machine is.
func processCPU(pid int) (time.Duration, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("cpu time of pid %d: no schedstat (%v)", pid, err)
	}
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // thread exited meanwhile
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("cpu time of pid %d: parse %s: %w", pid, t, err)
		}
		total += time.Duration(ns)
	}
	return total, nil
}

// cpuMeter measures one process's CPU time over a section.
type cpuMeter struct {
	pid   int
	start time.Duration
	err   error
}

func startCPU(pid int) *cpuMeter {
	if pid <= 0 {
		return nil
	}
	m := &cpuMeter{pid: pid}
	m.start, m.err = processCPU(pid)
	return m
}

// perCall is the CPU used since startCPU divided by calls; 0 when unknown.
func (m *cpuMeter) perCall(calls int) time.Duration {
	if m == nil || m.err != nil || calls <= 0 {
		return 0
	}
	end, err := processCPU(m.pid)
	if err != nil {
		return 0
	}
	return (end - m.start) / time.Duration(calls)
}
