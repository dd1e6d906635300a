package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of MaintenanceOptions.
const (
	DefaultGCInterval   = 5 * time.Minute
	DefaultDiscardRatio = 0.5
)

// MaintenanceOptions tune the store's background upkeep.
type MaintenanceOptions struct {
	// GCInterval is how often the value log is garbage-collected; default
	// DefaultGCInterval.
	GCInterval time.Duration
	// DiscardRatio is the share of a value-log file that must be garbage for
	// the file to be rewritten, in (0, 1); default DefaultDiscardRatio.
	DiscardRatio float64
}

// StartMaintenance starts the store's maintenance goroutine: every
// GCInterval it runs Badger's value-log GC repeatedly, each run rewriting at
// most one file, until a run finds nothing to rewrite. Each run is counted in
// slipstream_store_gc_runs_total{outcome} (see RegisterMetrics).
//
// The goroutine stops when ctx ends or when Close is called; Close waits for
// it (a rewrite in progress finishes first). Calling StartMaintenance again,
// on an in-memory store or on a closed store does nothing.
func (s *Store) StartMaintenance(ctx context.Context, o MaintenanceOptions) {
	if o.GCInterval <= 0 {
		o.GCInterval = DefaultGCInterval
	}
	if o.DiscardRatio <= 0 || o.DiscardRatio >= 1 {
		o.DiscardRatio = DefaultDiscardRatio
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.maintStop != nil || s.inMemory {
		return
	}
	ctx, s.maintStop = context.WithCancel(ctx)
	s.maint.Add(1)
	go s.maintain(ctx, o)
}

func (s *Store) maintain(ctx context.Context, o MaintenanceOptions) {
	defer s.maint.Done()
	t := time.NewTicker(o.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rewrote := s.collectGarbage(ctx, o.DiscardRatio)
		if rewrote > 0 {
			s.log.Info("value-log GC rewrote files", "files", rewrote)
		}
	}
}

// collectGarbage runs value-log GC until it rewrites nothing (or ctx ends)
// and returns how many files it rewrote.
func (s *Store) collectGarbage(ctx context.Context, ratio float64) int {
	n := 0
	for ctx.Err() == nil {
		if !s.RunGC(ratio) {
			return n
		}
		n++
	}
	return n
}

// RunGC runs one value-log GC pass and reports whether it rewrote a file.
// The run is counted in slipstream_store_gc_runs_total: outcome "rewrote",
// "nothing" (Badger's ErrNoRewrite) or "error" (anything else, logged).
//
// Known issue (Badger v4.9.6): a rewrite can bring back keys deleted
// before it ran (see the package doc, "Retention").
func (s *Store) RunGC(discardRatio float64) bool {
	err := s.db.RunValueLogGC(discardRatio)
	switch {
	case err == nil:
		s.gcRuns.WithLabelValues("rewrote").Inc()
		return true
	case errors.Is(err, badger.ErrNoRewrite):
		s.gcRuns.WithLabelValues("nothing").Inc()
	default:
		s.gcRuns.WithLabelValues("error").Inc()
		if !errors.Is(err, badger.ErrRejected) && !errors.Is(err, badger.ErrDBClosed) {
			s.log.Warn("value-log GC failed", "err", err)
		}
	}
	return false
}

// Size returns the disk space of the LSM tree (.sst files) and of the value
// log (.vlog files) in the data directory, read from the directory now
// (Badger's own DB.Size is refreshed once a minute and counts the active
// value-log file at its preallocated size). Where the platform tells,
// allocated blocks are counted rather than file lengths. Memtable WALs
// (.mem), the manifest and the discard stats are not included: DiskUsage
// counts them too. An in-memory store has size 0.
func (s *Store) Size() (lsm, vlog int64) {
	s.walk(func(name string, bytes int64) {
		switch filepath.Ext(name) {
		case ".sst":
			lsm += bytes
		case ".vlog":
			vlog += bytes
		}
	})
	return lsm, vlog
}

// DiskUsage returns the disk space of every file in the data directory.
func (s *Store) DiskUsage() int64 {
	var n int64
	s.walk(func(_ string, bytes int64) { n += bytes })
	return n
}

// walk calls fn for each file of the data directory with its disk space.
func (s *Store) walk(fn func(name string, bytes int64)) {
	if s.inMemory {
		return
	}
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue // removed meanwhile (compaction, GC)
		}
		fn(e.Name(), allocated(info))
	}
}

// RegisterMetrics registers the store's instruments on reg:
//
//	slipstream_store_bytes{part="lsm"|"vlog"}              gauge, read at scrape time (Size)
//	slipstream_store_gc_runs_total{outcome="rewrote"|"nothing"|"error"}  counter (RunGC)
func (s *Store) RegisterMetrics(reg prometheus.Registerer) error {
	part := func(name string, f func() int64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "slipstream_store_bytes",
			Help:        "Bytes of the Badger store on disk by part: lsm (.sst files) and vlog (value-log files).",
			ConstLabels: prometheus.Labels{"part": name},
		}, func() float64 { return float64(f()) })
	}
	for _, c := range []prometheus.Collector{
		part("lsm", func() int64 { lsm, _ := s.Size(); return lsm }),
		part("vlog", func() int64 { _, vlog := s.Size(); return vlog }),
		s.gcRuns,
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func newGCRuns() *prometheus.CounterVec {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipstream_store_gc_runs_total",
		Help: "Value-log GC runs by outcome: rewrote (a file was rewritten), nothing (no file had enough garbage), error.",
	}, []string{"outcome"})
	for _, o := range []string{"rewrote", "nothing", "error"} {
		v.WithLabelValues(o)
	}
	return v
}
