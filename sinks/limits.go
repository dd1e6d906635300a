package sinks

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/slipstream-sync/slipstream/internal/store"
)

// This file is the writer's periodic pass, on the writer goroutine: the
// rescan for entries that came back, and max_pending and max_age (the policy
// is in the package doc).

const (
	// defaultLimitEvery is how often a writer runs its periodic pass (rescan
	// and limits).
	defaultLimitEvery = 30 * time.Second
	// limitMinGap is the shortest time between two passes prompted by
	// Notify pushing the outbox over max_pending: an outbox that keeps
	// overflowing is trimmed once a second, not once per message.
	limitMinGap = time.Second
	// agePeek is how many entries a max_age pass reads first: usually the
	// head alone tells that nothing is too old.
	agePeek = 16
)

func (o *Outbox) limited() bool { return o.s.cfg.MaxPending > 0 || o.s.cfg.MaxAge > 0 }

// nextLimits is when the next pass is due.
func (o *Outbox) nextLimits() time.Time {
	w := &o.w
	next := w.limitsAt
	if o.overLimit.Load() {
		next = earliest(next, w.lastLimits.Add(limitMinGap))
	}
	return next
}

// limits runs a pass when one is due: periodically (limitEvery: the head
// check of rescan, then the limits), and soon after Notify found the outbox
// over max_pending (the limits only).
func (o *Outbox) limits(ctx context.Context, now time.Time) {
	next := o.nextLimits()
	if next.IsZero() || now.Before(next) {
		return
	}
	w := &o.w
	periodic := !now.Before(w.limitsAt)
	if periodic {
		w.limitsAt = now.Add(o.s.cfg.limitEvery)
	}
	w.lastLimits = now
	o.overLimit.Store(false)
	o.flushDeletes() // the store must not hold what was acknowledged
	if periodic {
		o.rescan()
		if w.recountDue { // the count may have drifted (a failed write, an entry that came back)
			o.recount()
		}
	}
	if o.limited() {
		o.enforce(ctx, now, periodic)
	}
}

// rescan reads the outbox's head from the very beginning (resetting the
// floor, see head) and, when the link is up and the head is an entry the
// writer neither holds nor will read (below its cursor, not loaded), makes
// the writer read the store again from there.
//
// Every committed entry is notified, and out-of-order commits rewind the
// writer, so this finds nothing unless an acknowledged entry came back:
// Badger's value-log GC can restore deleted keys (package store, "Known
// issue"). The read that follows, within limitEvery instead of at the
// link's next connection, deletes such an entry again if the writer
// completed it in this session (admit), else sends it again (receivers
// deduplicate it, as any redelivery) and deletes it on its ACK; the count
// of pending entries is redone, as it did not include it.
func (o *Outbox) rescan() {
	w := &o.w
	if w.conn == nil {
		return // the next connection reads the outbox from the start anyway
	}
	en, ok := o.head(true)
	if !ok || en.Seq >= w.cursor || w.bySeq[en.Seq] != nil {
		return
	}
	o.log.Warn("an outbox entry the writer had completed is back in the store (Badger value-log GC); reading the outbox again from it",
		"seq", en.Seq, "cursor", w.cursor)
	o.recount()
	o.mu.Lock()
	if o.rewind == 0 || en.Seq < o.rewind {
		o.rewind = en.Seq
	}
	o.dropMemLocked()
	o.mu.Unlock()
}

// enforce moves the oldest entries beyond max_pending, then those older
// than max_age, to the dead-letter store, and logs one line when it moved
// any.
func (o *Outbox) enforce(ctx context.Context, now time.Time, periodic bool) {
	cfg := &o.s.cfg
	w := &o.w
	if periodic && cfg.MaxPending > 0 && (w.recountDue || o.pending.Load() >= int64(cfg.MaxPending)/10*9) {
		o.recount()
	}
	var byCount, byAge int
	if cfg.MaxPending > 0 {
		if over := o.pending.Load() - int64(cfg.MaxPending); over > 0 {
			reason := fmt.Sprintf("outbox limit: max_pending %d exceeded", cfg.MaxPending)
			byCount = o.evict(ctx, int(over), reason, nil)
			o.evictedCount.Add(float64(byCount))
		}
	}
	if cfg.MaxAge > 0 {
		cutoff := now.Add(-cfg.MaxAge).UnixMilli()
		byAge = o.evict(ctx, math.MaxInt, "outbox limit: older than max_age", func(frame []byte) (evict, stop bool) {
			ts := frameTimestamp(frame)
			switch {
			case ts == 0:
				return false, false // no age known: neither evicted nor a reason to stop
			case ts < cutoff:
				return true, false
			}
			return false, true // the first young entry ends the pass
		})
		o.evictedAge.Add(float64(byAge))
	}
	if byCount+byAge == 0 {
		return
	}
	o.log.Warn("outbox over its limits: moved the oldest deliveries to the dead-letter store",
		"max_pending", cfg.MaxPending, "over_max_pending", byCount,
		"max_age", cfg.MaxAge.String(), "older_than_max_age", byAge,
		"pending", o.pending.Load())
	// Evicted entries may wait in the memory queue: read from the store.
	o.mu.Lock()
	o.dropMemLocked()
	o.mu.Unlock()
}

// evict moves up to n entries to the dead-letter store with reason, walking
// the outbox in seq order (oldest first), in flight or not. With old, only
// entries it says to evict are moved, and the walk ends where it says stop.
// It returns how many it moved.
func (o *Outbox) evict(ctx context.Context, n int, reason string, old func(frame []byte) (evict, stop bool)) int {
	w := &o.w
	moved := 0
	from := o.floorSeq()
	first := true
	for moved < n && ctx.Err() == nil {
		size := min(pageSize, n-moved)
		if old != nil && first {
			size = agePeek
		}
		first = false
		page, err := o.s.store.ReadOutbox(o.id, from, size)
		if err != nil {
			if !closedStore(err) {
				o.log.Warn("reading the outbox to enforce its limits failed", "err", err)
			}
			break
		}
		var moves []store.DLQMove
		stop := false
		for _, en := range page {
			if old != nil {
				ev, st := old(en.Frame)
				if st {
					stop = true
					break
				}
				if !ev {
					continue
				}
			}
			attempts := w.carry[en.Seq]
			if e := w.bySeq[en.Seq]; e != nil {
				attempts = e.spent
			}
			moves = append(moves, store.DLQMove{Seq: en.Seq, Frame: en.Frame, Attempts: attempts})
			if moved+len(moves) == n {
				stop = true
				break
			}
		}
		if len(moves) > 0 {
			k, err := o.s.store.MoveManyToDLQ(o.id, moves, reason)
			for _, m := range moves[:k] {
				if e := w.bySeq[m.Seq]; e != nil {
					o.remove(e)
				}
				delete(w.carry, m.Seq)
			}
			moved += k
			o.dead.Add(float64(k))
			o.pending.Add(-int64(k))
			if err != nil {
				if !closedStore(err) {
					o.log.Error("moving deliveries over the outbox limits to the dead-letter store failed; they stay in the outbox",
						"n", len(moves)-k, "reason", reason, "err", err)
				}
				break
			}
		}
		if stop || len(page) < size {
			break
		}
		from = page[len(page)-1].Seq + 1
	}
	return moved
}

// recount sets pending to the number of the link's entries in the store.
// Notifications that arrive while it counts are remembered (Notify records
// their seqs instead of counting them) and counted once: by the scan when
// their entry was committed before its snapshot, else here. A notification
// that comes after the count for a seq at or below the highest one the scan
// saw is taken as counted: entries are committed before they are notified,
// and in seq order but for races (a DLQ replay and the persist stage).
func (o *Outbox) recount() {
	o.mu.Lock()
	o.counting = true
	before := o.pending.Load() // Notify leaves it alone while counting; only this goroutine decrements
	o.mu.Unlock()
	notified := 0
	finish := func(last uint64) []uint64 {
		o.mu.Lock()
		defer o.mu.Unlock()
		if !o.counting {
			return nil
		}
		late := o.late
		notified = len(late) + o.lateExtra
		o.late, o.lateExtra, o.counting = nil, 0, false
		o.counted = max(o.counted, last)
		return late
	}
	n, found, err := o.s.store.CountOutboxAt(o.id, finish)
	if err != nil {
		finish(0)
		o.pending.Add(int64(notified)) // keep the old count and add the newcomers
		o.w.recountDue = true
		if !closedStore(err) {
			o.log.Warn("counting the outbox failed", "err", err)
		}
		return
	}
	o.w.recountDue = false
	o.pending.Add(int64(n+notified-found) - before)
	if limit := o.s.cfg.MaxPending; limit > 0 && o.pending.Load() > int64(limit) {
		o.overLimit.Store(true)
	}
}
