package sinks

import (
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/store"
)

// This file is how deliveries end, on the writer goroutine: acknowledged,
// re-sent after a timeout or a transient refusal, or dead-lettered.

// backoff is the wait after a send at level: ack_timeout doubled level
// times, at most backoff_max.
func (o *Outbox) backoff(level int) time.Duration {
	d := o.s.cfg.AckTimeout
	for range min(level, 40) {
		if d >= o.s.cfg.BackoffMax {
			break
		}
		d *= 2
	}
	return min(d, o.s.cfg.BackoffMax)
}

// expire acts on in-flight entries that are due: an ack timeout spends an
// attempt (dead-lettering after max_attempts) and re-sends; a held entry is
// re-sent.
func (o *Outbox) expire(now time.Time) {
	w := &o.w
	if w.conn == nil || w.nextDue.IsZero() || now.Before(w.nextDue) {
		return
	}
	w.nextDue = time.Time{}
	for _, e := range w.inflight {
		if w.conn == nil {
			return
		}
		if now.Before(e.due) {
			if w.nextDue.IsZero() || e.due.Before(w.nextDue) {
				w.nextDue = e.due
			}
			continue
		}
		if !e.held {
			e.spent++
			if limit := o.s.cfg.MaxAttempts; limit > 0 && e.spent >= limit {
				o.deadLetter(e, fmt.Sprintf("no ACK after %d attempts", e.spent))
				continue
			}
			e.level++
		}
		o.transmit(e)
	}
}

// ack completes the delivery (cluster, id). An ACK without cluster matches
// by messageId alone.
func (o *Outbox) ack(cluster, id string) {
	w := &o.w
	e := w.byKey[cluster+"\x00"+id]
	if e == nil && cluster == "" {
		e = o.findID(id)
	}
	if e == nil {
		o.ackLate(cluster + "\x00" + id)
		return
	}
	delete(w.lately, e.key)
	o.delivered(e, time.Now())
	o.acked.Inc()
	o.counters(e.typ).acked.Inc()
	o.remove(e)
	o.deleted(e)
}

// ackLate completes a delivery that was in flight when its session ended
// and is not loaded again yet: its ACK was still in the pipeline. The entry
// is deleted from the store at once, so the next session does not send it.
func (o *Outbox) ackLate(key string) {
	w := &o.w
	seq, ok := w.lately[key]
	if !ok {
		return
	}
	delete(w.lately, key)
	delete(w.carry, seq)
	o.acked.Inc()
	w.deletes = append(w.deletes, seq)
	w.done.add(seq)
	o.pending.Add(-1)
	o.flushDeletes()
}

// refuse handles an ERR from the link about one of its deliveries.
func (o *Outbox) refuse(f feedback) {
	e := o.findID(f.id)
	if e == nil {
		return
	}
	switch f.code {
	case slipstream.CodeRateLimited, slipstream.CodeOverloaded:
		if _, inflight := o.w.inflight[e.seq]; inflight {
			e.level++
			e.held = true
			e.due = time.Now().Add(o.backoff(e.level))
			if o.w.nextDue.IsZero() || e.due.Before(o.w.nextDue) {
				o.w.nextDue = e.due
			}
		}
	default:
		o.deadLetter(e, fmt.Sprintf("refused by %s: %s: %s", o.id, f.code, f.reason))
	}
}

// findID finds a loaded entry by messageId (a linear scan: ERRs and ACKs
// without cluster only).
func (o *Outbox) findID(id string) *entry {
	if id == "" {
		return nil
	}
	var found *entry
	for _, e := range o.w.bySeq {
		if e.id == id && (found == nil || e.seq < found.seq) {
			found = e
		}
	}
	return found
}

// deadLetter moves e to the dead-letter store. If the store refuses, the
// entry stays in the outbox and is tried again from the next session on.
func (o *Outbox) deadLetter(e *entry, reason string) {
	o.remove(e)
	if err := o.s.store.MoveToDLQ(o.id, e.seq, e.frame, reason, e.spent); err != nil {
		if !closedStore(err) {
			o.log.Error("moving a delivery to the dead-letter store failed; it stays in the outbox",
				"messageId", e.id, "seq", e.seq, "reason", reason, "err", err)
		}
		return
	}
	o.w.done.add(e.seq)
	o.dead.Inc()
	o.counters(e.typ).dead.Inc()
	o.pending.Add(-1)
	o.log.Warn("delivery dead-lettered", "messageId", e.id, "seq", e.seq, "reason", reason)
}

// remove forgets a loaded entry.
func (o *Outbox) remove(e *entry) {
	w := &o.w
	e.gone = true
	delete(w.inflight, e.seq)
	delete(w.bySeq, e.seq)
	if e.key == "" {
		return
	}
	first := w.byKey[e.key]
	switch {
	case first == e && e.nextSameKey != nil:
		w.byKey[e.key] = e.nextSameKey
	case first == e:
		delete(w.byKey, e.key)
	default:
		for p := first; p != nil; p = p.nextSameKey {
			if p.nextSameKey == e {
				p.nextSameKey = e.nextSameKey
				break
			}
		}
	}
	e.nextSameKey = nil
}

// deleted queues e's store entry for deletion (batched by flushDeletes).
func (o *Outbox) deleted(e *entry) {
	o.w.deletes = append(o.w.deletes, e.seq)
	o.w.done.add(e.seq)
	o.pending.Add(-1)
}

// Completed entries are deleted from the store in batches, at most
// deleteDelay after the first of a batch completed, or once deleteBatch
// are pending: every Badger write is synced, and it is the same write
// queue (and fsync) as the persist stage's group commits, so a delete per
// writer wake-up (per ACK batch) would make the commits that ACK senders
// wait for extra syncs. A crash can then send again the deliveries completed
// in the last deleteDelay, as it could those whose ACK was still in the
// pipeline (receivers deduplicate). Everything that reads the outbox from
// the store (load, limits, recount, the end of a session) flushes first.
const (
	deleteDelay = 10 * time.Millisecond
	deleteBatch = 1024
)

// lazyDeletes flushes the pending deletes when they are due (see
// deleteDelay), else makes sure they will be.
func (o *Outbox) lazyDeletes(now time.Time) {
	w := &o.w
	switch {
	case len(w.deletes) == 0:
		w.deleteDue = time.Time{}
	case len(w.deletes) >= deleteBatch || (!w.deleteDue.IsZero() && !now.Before(w.deleteDue)):
		o.flushDeletes()
	case w.deleteDue.IsZero():
		w.deleteDue = now.Add(deleteDelay)
	}
}

// flushDeletes deletes the completed entries from the store in one write.
// A failure leaves them to be sent (and acknowledged) again later.
func (o *Outbox) flushDeletes() {
	w := &o.w
	w.deleteDue = time.Time{}
	if len(w.deletes) == 0 {
		return
	}
	if err := o.s.store.DeleteOutbox(o.id, w.deletes); err != nil && !closedStore(err) {
		o.log.Warn("deleting completed deliveries failed; they will be sent again", "n", len(w.deletes), "err", err)
		w.recountDue = true
	}
	w.deletes = w.deletes[:0]
}

// closedStore reports whether err comes from a store closed under the
// writer (shutdown), which is not worth a log line.
func closedStore(err error) bool {
	return errors.Is(err, store.ErrClosed) || errors.Is(err, badger.ErrDBClosed)
}
