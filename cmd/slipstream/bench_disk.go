package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"
)

// The disk probe (-disk-probe) measures what an instance cannot go below:
// an ACK waits for a synced store commit, and a commit cannot be faster
// than one synced append to a file on the same file system. Its latencies
// are printed beside the instance's publish->ACK, so that a latency target
// can be read against the disk it runs on.

// Defaults of the disk probe: appends of one frame's bytes, spaced so that
// each finds the device idle (what the first message of a quiet instance
// meets), bounded in count and time.
const (
	diskProbeAppends = 2000
	diskProbeGap     = time.Millisecond
	diskProbeMaxTime = 20 * time.Second
)

// diskResult is the disk probe's part of the summary.
type diskResult struct {
	Dir     string  `json:"dir"`
	Bytes   int     `json:"bytes"`   // per append
	Appends latency `json:"appends"` // write + fsync, ms
}

// diskProbe appends size bytes and syncs the file, n times (fewer if ctx
// ends or limit passes), in a fresh file in dir that it removes, and returns
// the latency of each write-and-sync.
func diskProbe(ctx context.Context, dir string, size, n int, gap, limit time.Duration) (*diskResult, error) {
	f, err := os.CreateTemp(dir, ".slipstream-disk-probe-")
	if err != nil {
		return nil, fmt.Errorf("bench: disk probe in %s: %w", dir, err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, max(size, 1))
	for i := range buf {
		buf[i] = 'x'
	}
	var h histogram
	deadline := time.Now().Add(limit)
	for i := 0; i < n && ctx.Err() == nil && time.Now().Before(deadline); i++ {
		start := time.Now()
		if _, err := f.Write(buf); err != nil {
			return nil, fmt.Errorf("bench: disk probe write: %w", err)
		}
		if err := f.Sync(); err != nil { // fsync, as Badger syncs its files
			return nil, fmt.Errorf("bench: disk probe sync: %w", err)
		}
		h.record(time.Since(start))
		time.Sleep(gap)
	}
	if h.n == 0 {
		return nil, fmt.Errorf("bench: disk probe in %s: no append was measured", dir)
	}
	return &diskResult{Dir: dir, Bytes: len(buf), Appends: h.summary()}, nil
}

// printDisk prints the disk probe's line, and how publish->ACK compares.
func printDisk(w io.Writer, d *diskResult, ack latency) {
	a := d.Appends
	fmt.Fprintf(w, "\ndisk probe: write+fsync of %d bytes in %s, %d appends %s apart: p50 %.3f ms, p90 %.3f, p99 %.3f, p99.9 %.3f, max %.3f\n",
		d.Bytes, d.Dir, a.Count, diskProbeGap, a.P50, a.P90, a.P99, a.P999, a.Max)
	if a.P50 > 0 && a.P99 > 0 && ack.Count > 0 {
		fmt.Fprintf(w, "publish->ACK against it: p50 %.1fx, p99 %.1fx\n", ack.P50/a.P50, ack.P99/a.P99)
	}
}
