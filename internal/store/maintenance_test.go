package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/slipstream-sync/slipstream/internal/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Process-wide helpers of Badger's dependencies.
		goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
		goleak.IgnoreTopFunction("github.com/dgraph-io/ristretto/v2.(*defaultPolicy[...]).processItems"),
		goleak.IgnoreAnyFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

// gcStore opens a store with small value-log files and memtables, so that a
// few MiB of deleted values make value-log garbage that compaction notices.
func gcStore(t *testing.T) *Store {
	t.Helper()
	st, err := Open(t.TempDir(), Options{ValueLogFileSize: 1 << 20, MemTableSize: 1 << 18})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// churn writes values big enough for the value log (above the 4 KiB
// threshold) to an outbox and deletes them again, as completed deliveries
// are: rounds of 1000, about 8 MiB each.
func churn(t *testing.T, st *Store, rounds int) {
	t.Helper()
	val := make([]byte, 8<<10)
	for r := range rounds {
		for i := 0; i < 1000; i += 50 {
			wb := st.DB().NewWriteBatch()
			seqs := make([]uint64, 0, 50)
			for j := i; j < i+50; j++ {
				seq := uint64(r*1000 + j + 1)
				seqs = append(seqs, seq)
				if err := wb.Set(OutboxKey("a", seq), val); err != nil {
					t.Fatal(err)
				}
			}
			if err := wb.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := st.DeleteOutbox("a", seqs); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// The maintenance goroutine runs value-log GC every interval, counts each
// run, and stops with Close.
func TestMaintenanceCountsRunsAndStopsWithClose(t *testing.T) {
	st, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.StartMaintenance(context.Background(), MaintenanceOptions{GCInterval: 10 * time.Millisecond})
	st.StartMaintenance(context.Background(), MaintenanceOptions{}) // a second call does nothing
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := gcRuns(t, st, "nothing"); n < 3 {
			return fmt.Errorf("%v runs that found nothing, want 3", n)
		}
		return nil
	})
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	total := func() float64 { return gcRuns(t, st, "rewrote") + gcRuns(t, st, "nothing") + gcRuns(t, st, "error") }
	after := total()
	time.Sleep(50 * time.Millisecond) // five intervals
	if now := total(); now != after {
		t.Fatalf("GC ran after Close: %v runs, then %v", after, now)
	}
	if n := gcRuns(t, st, "error"); n != 0 {
		t.Errorf("%v GC runs failed", n)
	}
	// goleak (TestMain) finds the goroutine if Close did not wait for it.
}

// Deleted values leave value-log garbage that the maintenance goroutine
// rewrites away, and the size metrics show it.
//
// The garbage is made before maintenance starts: Badger v4.9.6 reads a
// memtable's maxVersion in DB.MaxVersion (at the start of a rewrite)
// without the lock its writer holds, which the race detector reports when
// writes run at the same moment (benign on 64-bit platforms).
func TestMaintenanceCollectsValueLogGarbage(t *testing.T) {
	st := gcStore(t)
	defer st.Close()
	reg := prometheus.NewRegistry()
	if err := st.RegisterMetrics(reg); err != nil {
		t.Fatal(err)
	}
	churn(t, st, 10)
	_, before := st.Size()
	if got := storeBytes(t, reg, "vlog"); got != float64(before) {
		t.Errorf("slipstream_store_bytes{part=vlog} = %v, Size() = %d", got, before)
	}
	st.StartMaintenance(context.Background(), MaintenanceOptions{GCInterval: 10 * time.Millisecond})
	testutil.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if gcRuns(t, st, "rewrote") == 0 || gcRuns(t, st, "nothing") == 0 {
			return fmt.Errorf("rewrote %v times, found nothing %v times", gcRuns(t, st, "rewrote"), gcRuns(t, st, "nothing"))
		}
		return nil
	})
	if _, after := st.Size(); after >= before {
		t.Errorf("value log %d bytes after GC, %d before", after, before)
	}
}

func gcRuns(t *testing.T, st *Store, outcome string) float64 {
	t.Helper()
	var m dto.Metric
	if err := st.gcRuns.WithLabelValues(outcome).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// storeBytes reads slipstream_store_bytes{part} from reg.
func storeBytes(t *testing.T, reg *prometheus.Registry, part string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "slipstream_store_bytes" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == part {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no slipstream_store_bytes{part=%q}", part)
	return 0
}

// Close is safe to call twice, and maintenance after Close does nothing.
func TestCloseTwice(t *testing.T) {
	st, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	st.StartMaintenance(context.Background(), MaintenanceOptions{GCInterval: time.Millisecond})
}

// Cancelling the context stops maintenance too.
func TestMaintenanceStopsWithContext(t *testing.T) {
	st, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithCancel(context.Background())
	st.StartMaintenance(ctx, MaintenanceOptions{GCInterval: time.Millisecond})
	cancel()
	done := make(chan struct{})
	go func() { st.maint.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("maintenance did not stop when its context was cancelled")
	}
}
