package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/slipstream-sync/slipstream/client"
)

// subscribe counts what subscriber s receives, until its connection ends.
func (r *loadRun) subscribe(s *benchSubscriber) {
	defer close(s.countDone)
	defer func() {
		if err := s.c.Err(); err != nil && !errors.Is(err, client.ErrClosed) {
			r.noteError(fmt.Errorf("subscriber %s: %w", s.id, err))
		}
	}()
	prefix := r.tag + "/"
	for d := range s.c.Deliveries() {
		now := time.Now()
		key, ok := strings.CutPrefix(d.Msg.Key, prefix)
		if !ok {
			continue // not of this run
		}
		if p, ok := strings.CutPrefix(key, "probe/"); ok {
			if n, err := strconv.ParseInt(p, 10, 64); err == nil {
				s.probe.Store(n)
			}
			continue
		}
		seq, err := strconv.ParseInt(key, 10, 64)
		if err != nil || seq < 0 || seq >= r.total {
			s.unexp.Add(1)
			continue
		}
		w, bit := seq/64, uint64(1)<<(seq%64)
		if s.seen[w]&bit != 0 {
			s.dups.Add(1)
			continue
		}
		s.seen[w] |= bit
		s.distinct.Add(1)
		if seq < r.o.Warmup {
			continue
		}
		for _, f := range d.Msg.Extra {
			if f.Name == sentField {
				if ns, err := strconv.ParseInt(string(f.Value), 10, 64); err == nil {
					s.hist.record(now.Sub(time.Unix(0, ns)))
				}
				break
			}
		}
		s.measured.Add(1)
		s.lastNs.Store(now.UnixNano())
	}
}

// awaitDeliveries waits until every subscriber has every ACKed message, or
// the drain timeout.
func (r *loadRun) awaitDeliveries(ctx context.Context) {
	deadline := time.Now().Add(r.o.DrainTimeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		acked, done := r.acked.Load(), true
		for _, s := range r.subs {
			select {
			case <-s.countDone: // its connection ended: nothing more comes
				continue
			default:
			}
			if s.distinct.Load() < acked {
				done = false
			}
		}
		if done {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// awaitOutboxes waits (up to 5s) for the target's in-process instances to
// delete the deliveries their subscribers and peers ACKed, and returns how
// many are left over all of them.
func (r *loadRun) awaitOutboxes(t *benchTarget) (int, error) {
	links := make([][]string, len(t.locals))
	for i, l := range t.locals {
		links[i] = append(links[i], l.peers...)
		for _, s := range r.subs {
			if t.subURLs[s.at] == l.url {
				links[i] = append(links[i], s.id)
			}
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		total := 0
		for i, l := range t.locals {
			n, err := l.outboxLeft(links[i])
			if err != nil {
				return 0, err
			}
			total += n
		}
		if total == 0 || time.Now().After(deadline) {
			return total, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}
