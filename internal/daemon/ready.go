package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/slipstream-sync/slipstream/internal/admin"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// Readiness timings.
const (
	// readyCache is how long a store probe's result is reused, so that
	// frequent scrapes of /readyz cost one write a second at most.
	readyCache = time.Second
	// readyTimeout bounds one store probe.
	readyTimeout = 2 * time.Second
)

// readyKey is the reserved key the store probe writes and deletes ("h/" is
// the store's housekeeping family).
var readyKey = []byte("h/readyz-probe")

// storeProbe checks that the store takes a synced write (a set and a delete
// of readyKey), reusing the last result for readyCache.
type storeProbe struct {
	db interface {
		Update(func(*badger.Txn) error) error
		IsClosed() bool
	}

	mu   sync.Mutex
	at   time.Time
	last error
}

func (p *storeProbe) check() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.at.IsZero() && time.Since(p.at) < readyCache {
		return p.last
	}
	p.last = p.probe()
	p.at = time.Now()
	return p.last
}

func (p *storeProbe) probe() error {
	if p.db.IsClosed() {
		return errors.New("the store is closed")
	}
	done := make(chan error, 1)
	go func() {
		done <- p.db.Update(func(txn *badger.Txn) error {
			if err := txn.Set(readyKey, []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
				return err
			}
			return txn.Delete(readyKey)
		})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("the store cannot be written: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("a store write took longer than %s", readyTimeout)
	}
}

// readyChecks are /readyz's checks: the store takes a write, every source's
// listener is up, and every peer of admin.ready_peers is connected.
func (in *Instance) readyChecks() []admin.Check {
	sp := &storeProbe{db: in.store.DB()}
	checks := []admin.Check{{Name: "store", Fn: sp.check}}
	for ref, s := range in.sources {
		if r, ok := s.(pipeline.Readier); ok {
			checks = append(checks, admin.Check{Name: "source " + ref, Fn: r.Ready})
		}
	}
	for _, id := range in.cfg.Admin.ReadyPeers {
		checks = append(checks, admin.Check{Name: "peer " + id, Fn: func() error {
			l := in.links.Get(id)
			switch {
			case l == nil:
				return fmt.Errorf("peer %q is unknown (not configured and never connected)", id)
			case !l.Connected():
				return fmt.Errorf("peer %q is not connected", id)
			}
			return nil
		}})
	}
	return checks
}
