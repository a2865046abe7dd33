//go:build race

package testbed

// raceEnabled: the bed was built with -race, so it builds pullguard with -race too and the
// proxy's concurrency is checked in the end-to-end runs.
const raceEnabled = true
