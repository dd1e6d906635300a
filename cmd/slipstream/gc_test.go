package main

import (
	"runtime/debug"
	"testing"
)

func TestApplyGCDefault(t *testing.T) {
	before := debug.SetGCPercent(100)
	defer debug.SetGCPercent(before)

	if got := applyGCDefault(func(string) string { return "" }); got != defaultGCPercent {
		t.Fatalf("GOGC unset: applyGCDefault = %d, want %d", got, defaultGCPercent)
	}
	if now := debug.SetGCPercent(100); now != defaultGCPercent {
		t.Fatalf("GOGC unset: the runtime's GC percent is %d, want %d", now, defaultGCPercent)
	}

	// GOGC set: whatever the runtime took from it stays (here 80, as if
	// GOGC=80 had been read at start-up).
	debug.SetGCPercent(80)
	env := func(k string) string {
		if k == "GOGC" {
			return "80"
		}
		return ""
	}
	if got := applyGCDefault(env); got != 80 {
		t.Fatalf("GOGC=80: applyGCDefault = %d, want 80", got)
	}
	if now := debug.SetGCPercent(100); now != 80 {
		t.Fatalf("GOGC=80: the runtime's GC percent is %d, want it left at 80", now)
	}
}
