//go:build !race

// This file is left out of -race runs: Badger v4.9.6 reports a data race
// between a value-log rewrite and concurrent writes (DB.MaxVersion reads a
// memtable's maxVersion without the writer's lock).

package store

import (
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestBadgerGCResurrectsDeletedKeys reproduces a Badger v4.9.6 bug that the
// store works around (package doc, "Retention"): value-log GC writes back a
// value whose key was deleted before the rewrite ran (it looks the key up at
// the value's own version, which the later tombstone does not hide), and
// when compaction then drops the tombstone at the last level, the deleted
// key is back. It fails while the bug is there; run it by hand:
//
//	SLIPSTREAM_BADGER_REPRO=1 go test -run TestBadgerGCResurrectsDeletedKeys -v ./internal/store/
//
// (usually a few dozen of some 10,000 deleted keys come back within 4s).
func TestBadgerGCResurrectsDeletedKeys(t *testing.T) {
	if os.Getenv("SLIPSTREAM_BADGER_REPRO") != "1" {
		t.Skip("reproduces a known Badger bug; set SLIPSTREAM_BADGER_REPRO=1 to run it")
	}
	st := gcStore(t)
	defer st.Close()
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			st.RunGC(0.5)
			time.Sleep(time.Millisecond)
		}
	}()
	val := make([]byte, 8<<10) // in the value log
	var seq uint64
	for deadline := time.Now().Add(4 * time.Second); time.Now().Before(deadline); {
		seqs := make([]uint64, 0, 50)
		wb := st.DB().NewWriteBatch()
		for range 50 {
			seq++
			seqs = append(seqs, seq)
			if err := wb.Set(OutboxKey("a", seq), val); err != nil {
				t.Fatal(err)
			}
		}
		if err := wb.Flush(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond) // pending a moment, as deliveries are
		if err := st.DeleteOutbox("a", seqs); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	time.Sleep(500 * time.Millisecond) // let compactions settle
	if n, _ := st.CountOutbox("a"); n != 0 {
		es, _ := st.ReadOutbox("a", 0, 1)
		t.Fatalf("%d of %d deleted keys came back after %v GC rewrites, e.g. seq %d",
			n, seq, gcRuns(t, st, "rewrote"), es[0].Seq)
	}
}
