package main

import (
	"os"
	"runtime/debug"
)

// defaultGCPercent is the Go collector's GOGC for `slipstream run` (and the
// bench's in-process instances) when the environment does not set GOGC.
// Go's own default, 100, lets the heap grow to twice what is live before a
// collection; an instance's live heap is mostly Badger's memtables and
// table buffers, so that headroom was the largest single share of its RSS.
// At 50, measured on the 2-vCPU reference machine (BENCHMARKS.md (j)): peak
// RSS at full speed 144-147 -> 123-126 MiB and at 10 000 msgs/s 108-116 ->
// 93-99 MiB, for 3-8% more CPU at full speed and none at 10 000 msgs/s.
// GOGC in the environment wins (GOGC=100 restores Go's default; GOMEMLIMIT
// is honoured as always).
const defaultGCPercent = 50

// applyGCDefault sets the collector to defaultGCPercent unless getenv
// reports GOGC set, and returns the GC percent now in effect (-1: off).
func applyGCDefault(getenv func(string) string) int {
	if getenv("GOGC") != "" {
		return gcPercent() // as GOGC set it
	}
	debug.SetGCPercent(defaultGCPercent)
	return defaultGCPercent
}

// gcPercent returns the collector's GC percent (-1: off), leaving it as it is.
func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

// gcPercentEnv is os.Getenv; a variable so that tests need not touch the
// process environment.
var gcPercentEnv = os.Getenv
