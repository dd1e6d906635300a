package sinks

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/telemetry"
)

// storeRetry is how long the writer waits after a failed store read.
const storeRetry = time.Second

// defaultParkAfter is WebSocketConfig.parkAfter's default. Measured at
// 1 000 msgs/s (BENCHMARKS.md (n)): parking as soon as the writer was idle
// started a goroutine per message (its stack grown again each time), +8%
// CPU.
const defaultParkAfter = time.Second

// entry is one pending delivery the writer has loaded (ready or in flight).
type entry struct {
	seq         uint64
	frame       []byte
	key         string // clusterGroupId NUL messageId, for ACKs
	id          string
	typ         string // message type, for the metrics
	timestamp   int64  // the message's origin timestamp (ms), for its age
	traceparent string // the stored trace context: the parent of the send spans
	tracestate  string
	spent       int       // ack timeouts elapsed while the link was up
	level       int       // backoff level: the next wait is ack_timeout << level
	due         time.Time // in flight: when to act
	sentAt      time.Time
	sent        bool // sent in this session
	held        bool // waiting to re-send after rate_limited / overloaded
	gone        bool // acked or dead-lettered while still in the ready queue
	nextSameKey *entry
}

// writer is the state of an Outbox's goroutine; nothing else touches it.
type writer struct {
	conn     link.Conn // nil: down
	sess     context.Context
	cancel   context.CancelFunc
	gen      uint64
	acks     bool // the link acknowledges (read at session start)
	cursor   uint64
	ready    []*entry // loaded, not yet sent, in seq order (from head)
	head     int
	inflight map[uint64]*entry
	bySeq    map[uint64]*entry // ready and in flight
	byKey    map[string]*entry // ready and in flight; duplicates chained
	carry    map[uint64]int    // attempts spent before a disconnect, by seq
	// lately maps the key of each delivery in flight when a session ended
	// to its seq: an ACK still inside the pipeline then completes it
	// instead of being lost (the message would be sent again).
	lately map[string]uint64
	// done holds the seqs of the deliveries completed in this session (the
	// latest doneCap of them): a Notify that reaches the writer after the
	// entry was read from the store, sent and completed must not bring it
	// back (see admit).
	done    doneSet
	deletes []uint64
	// deleteDue is when the pending deletes must be written (zero: none
	// pending); see lazyDeletes.
	deleteDue time.Time
	more      bool      // the last load left entries in the store: load again
	nextDue   time.Time // no in-flight entry is due before this
	retryAt   time.Time // after a store error, no read before this
	idleSince time.Time // since when the writer has had nothing to do (zero: busy); see park

	limitsAt   time.Time // the next periodic limits pass
	lastLimits time.Time // the last limits pass
	recountDue bool      // pending may have drifted (a store write failed)

	out map[string]*outCounters // slipstream_messages_out_total by type, made on first use
	rtt prometheus.Observer     // slipstream_ack_rtt_seconds of the link
}

// outCounters are the outcomes of slipstream_messages_out_total for one
// message type and this link.
type outCounters struct{ sent, redelivered, acked, dead prometheus.Counter }

// counters returns the link's counters for message type typ.
func (o *Outbox) counters(typ string) *outCounters {
	w := &o.w
	if c := w.out[typ]; c != nil {
		return c
	}
	if w.out == nil {
		w.out = map[string]*outCounters{}
	}
	l, v := telemetry.LinkLabel(o.id, o.durable), o.s.m.out
	c := &outCounters{
		sent:        v.WithLabelValues(typ, l, "sent"),
		redelivered: v.WithLabelValues(typ, l, "redelivered"),
		acked:       v.WithLabelValues(typ, l, "acked"),
		dead:        v.WithLabelValues(typ, l, "dead_lettered"),
	}
	w.out[typ] = c
	return c
}

// delivered observes an ACK (or, for a link that does not acknowledge, the
// send) of e: its round trip and the message's age.
func (o *Outbox) delivered(e *entry, now time.Time) {
	w := &o.w
	if e.sent && w.acks {
		if w.rtt == nil {
			w.rtt = o.s.m.rtt.WithLabelValues(telemetry.LinkLabel(o.id, o.durable))
		}
		w.rtt.Observe(now.Sub(e.sentAt).Seconds())
	}
	telemetry.ObserveAge(o.s.m.delivered, e.timestamp, now)
}

func (w *writer) init() {
	w.inflight = map[uint64]*entry{}
	w.bySeq = map[uint64]*entry{}
	w.byKey = map[string]*entry{}
	w.carry = map[uint64]int{}
	w.lately = map[string]uint64{}
}

// run is the writer goroutine: apply what the inbox holds, then expire,
// load and send, then sleep until something changes or is due. A writer
// with nothing to do parks (the goroutine returns) and signalLocked starts
// it again (first: the writer's first start).
func (o *Outbox) run(ctx context.Context, first bool) {
	w := &o.w
	if first {
		o.recount()
		w.limitsAt = time.Now() // a first pass at once: the limits may have changed since the last run
	}
	if o.loop(ctx) {
		return // parked
	}
	o.finish()
}

// finish ends the writer for good: by its goroutine once ctx is done, or by
// Close when the writer was parked.
func (o *Outbox) finish() {
	o.endSession()
	o.flushDeletes()
	close(o.exited)
}

// loop runs the writer until ctx is done (false) or it parks (true).
func (o *Outbox) loop(ctx context.Context) bool {
	w := &o.w
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for ctx.Err() == nil {
		// The entries that the ACKs applied by sync complete are deleted
		// from the store after the sends below (a window freed by ACKs is
		// refilled without waiting for a synced write), and lazily: see
		// lazyDeletes. Whatever reads the store (load, limits, the end of
		// a session) deletes what is pending first.
		o.sync(ctx)
		now := time.Now()
		o.expire(now)
		o.limits(ctx, now)
		o.load()
		o.send()
		o.lazyDeletes(now)
		if o.canLoad() && w.more {
			continue // the backlog goes on and nothing else will wake us
		}
		if o.park() {
			return true
		}

		next := earliest(earliest(earliest(w.nextDue, w.retryAt), o.nextLimits()), w.deleteDue)
		if !w.idleSince.IsZero() {
			next = earliest(next, w.idleSince.Add(o.s.cfg.parkAfter))
		}
		timer.Stop()
		if !next.IsZero() {
			timer.Reset(max(time.Until(next), time.Millisecond))
		}
		var connDone <-chan struct{}
		if w.conn != nil {
			connDone = w.conn.Done()
		}
		select {
		case <-ctx.Done():
		case <-o.wake:
		case <-timer.C:
		case <-connDone:
			o.lost()
		}
	}
	return false
}

// park stops the goroutine of a writer that has had nothing to do for
// parkAfter: nothing ready, in flight, to delete or to retry, nothing in
// its inbox, and, for a durable link, nothing in its outbox. An idle connection then holds no
// writer goroutine (its stack is most of what such a connection costs). A
// connection that closes meanwhile is reported by Disconnected, which
// wakes it; the sink's rouse wakes a durable link's writer for its periodic
// pass (limits, and the rescan for entries Badger's GC brought back).
func (o *Outbox) park() bool {
	w := &o.w
	if (o.durable && o.pending.Load() != 0) || len(w.inflight) > 0 || o.readyLen() > 0 || len(w.deletes) > 0 || w.more ||
		!w.retryAt.IsZero() || w.recountDue {
		w.idleSince = time.Time{}
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.wake) > 0 || o.behind || len(o.mem) > 0 || len(o.feedback) > 0 || o.gen != w.gen ||
		o.rewind != 0 || o.counting || o.closed {
		w.idleSince = time.Time{}
		return false
	}
	now := time.Now()
	if w.idleSince.IsZero() {
		w.idleSince = now
	}
	if now.Sub(w.idleSince) < o.s.cfg.parkAfter {
		return false // idle, but not for long enough yet (the loop's timer comes back)
	}
	w.idleSince = time.Time{}
	o.running = false
	return true
}

// earliest returns the earlier of a and b, a zero time meaning "never".
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// sync applies the inbox: ACKs and ERRs first (they may belong to the
// session that is ending), then a change of connection.
func (o *Outbox) sync(ctx context.Context) {
	w := &o.w
	o.mu.Lock()
	fb := o.feedback
	o.feedback = nil
	conn, gen := o.conn, o.gen
	o.mu.Unlock()
	for _, f := range fb {
		if f.code == "" {
			o.ack(f.cluster, f.id)
		} else {
			o.refuse(f)
		}
	}
	if gen == w.gen {
		return
	}
	o.endSession()
	w.gen = gen
	if conn == nil {
		return
	}
	sess, cancel := context.WithCancel(ctx)
	o.mu.Lock()
	if o.gen != gen { // changed again meanwhile: the next sync handles it
		o.mu.Unlock()
		cancel()
		return
	}
	o.sessCancel = cancel
	o.mu.Unlock()
	w.conn, w.sess, w.cancel = conn, sess, cancel
	w.acks = o.link.Acks()
	w.cursor = 0
}

// endSession forgets everything in flight or ready (remembering the
// attempts already spent); the next session re-reads the store from the
// beginning.
func (o *Outbox) endSession() {
	w := &o.w
	o.flushDeletes()
	clear(w.lately)
	for seq, e := range w.bySeq {
		if e.spent > 0 && len(w.carry) < 4*o.s.cfg.Window+pageSize {
			w.carry[seq] = e.spent
		}
		if _, sent := w.inflight[seq]; sent && e.key != "" && len(w.lately) < 4*o.s.cfg.Window {
			w.lately[e.key] = seq
		}
	}
	if w.cancel != nil {
		w.cancel()
	}
	clear(w.ready)
	w.ready, w.head = w.ready[:0], 0
	clear(w.inflight)
	clear(w.bySeq)
	clear(w.byKey)
	w.done.reset()
	w.conn, w.sess, w.cancel = nil, nil, nil
	w.cursor, w.more = 0, false
	w.nextDue = time.Time{}
}

// lost handles a connection found closed (Done, or SendData failed) before
// the registry reported it: the session ends, and the writer waits for the
// next Connected (the inbox still names c, with the same gen, so the next
// sync does not adopt it again).
func (o *Outbox) lost() {
	c := o.w.conn
	o.endSession()
	o.mu.Lock()
	if o.conn == c {
		o.dropMemLocked()
	}
	o.mu.Unlock()
}

// load fills the ready queue when it is empty: from memory while the writer
// keeps up, else one page from the store.
func (o *Outbox) load() {
	w := &o.w
	if !o.canLoad() {
		return
	}
	if !w.retryAt.IsZero() && time.Now().Before(w.retryAt) {
		return
	}
	w.retryAt = time.Time{}
	o.mu.Lock()
	behind, mem, rewind, notified := o.behind, o.mem, o.rewind, o.lastNotified
	if !behind {
		o.mem, o.memBytes = nil, 0
	} else {
		// From here on, Notify keeps what it is told in mem (unless it
		// overflows): what the read below does not see, mem then holds.
		clear(o.mem)
		o.mem, o.memBytes, o.memLost = o.mem[:0], 0, false
	}
	o.rewind = 0
	o.mu.Unlock()
	if rewind != 0 && rewind < w.cursor {
		w.cursor = rewind
	}
	if !behind {
		o.admitMemory(mem)
		return
	}
	o.flushDeletes() // the page must not bring back what was just acked
	page, err := o.s.store.ReadOutbox(o.id, w.cursor, pageSize)
	if err != nil {
		o.log.Warn("reading the outbox failed; retrying", "err", err)
		w.retryAt = time.Now().Add(storeRetry)
		return
	}
	if o.s.afterRead != nil {
		o.s.afterRead(o.id)
	}
	for _, en := range page {
		o.admit(en.Seq, en.Frame, nil, true)
	}
	w.more = len(page) == pageSize
	if !w.more {
		// Every entry notified before the read was committed before it, so
		// the read saw it: caught up, unless more came meanwhile and mem
		// missed some of them.
		w.cursor = max(w.cursor, notified+1)
		o.mu.Lock()
		if o.gen == w.gen && o.rewind == 0 && (o.lastNotified == notified || !o.memLost && o.catchUpLocked()) {
			o.behind = false
		}
		o.mu.Unlock()
	}
}

// catchUpLocked is called, with mu held, after a read of the store that
// reached its end while Notify kept the entries notified since the read
// began in mem: mem then holds every entry the read did not return, and
// the writer can go on from memory. It drops from mem the entries the read
// returned (below the cursor, loaded and not sent yet). An entry below the
// cursor that the read did not return was committed out of order: the
// writer goes back to the store from there, and false is returned.
func (o *Outbox) catchUpLocked() bool {
	w := &o.w
	var low uint64
	kept := o.mem[:0]
	o.memBytes = 0
	for _, m := range o.mem {
		switch {
		case m.seq >= w.cursor:
			kept = append(kept, m)
			o.memBytes += len(m.frame)
		case w.bySeq[m.seq] == nil && (low == 0 || m.seq < low):
			low = m.seq
		}
	}
	clear(o.mem[len(kept):])
	o.mem = kept
	if low != 0 {
		w.cursor, w.more = low, true
		o.dropMemLocked()
		return false
	}
	return true
}

// canLoad reports whether the writer could send more right now: the link is
// up, the window has room and nothing is ready.
func (o *Outbox) canLoad() bool {
	w := &o.w
	return w.conn != nil && (!w.acks || len(w.inflight) < o.s.cfg.Window) && o.readyLen() == 0
}

// admitMemory admits notified entries. One below the cursor was either
// loaded from the store already (skipped) or committed out of order; if it
// is not loaded now, the writer goes back to the store from there (an entry
// acknowledged meanwhile is gone from the store and is not sent again).
func (o *Outbox) admitMemory(mem []memEntry) {
	w := &o.w
	var low uint64
	for _, m := range mem {
		if m.seq < w.cursor {
			if w.bySeq[m.seq] == nil && (low == 0 || m.seq < low) {
				low = m.seq
			}
			continue
		}
		if m.hdr.MessageID != "" {
			o.admit(m.seq, m.frame, &m.hdr, false)
		} else {
			o.admit(m.seq, m.frame, nil, false)
		}
	}
	if low == 0 {
		return
	}
	w.cursor, w.more = low, true
	o.mu.Lock()
	if o.gen == w.gen {
		o.dropMemLocked()
	}
	o.mu.Unlock()
}

// admit adds a loaded entry to the ready queue (fromStore: read from the
// store, else notified), skipping entries already loaded or completed in
// this session. A notified one may have been read from the store before its
// Notify came, sent and completed: it would otherwise be taken again once a
// store read from below it missed it (gone from the store, the read cannot
// tell it from one committed after it). One read from the store although
// completed came back (Badger's value-log GC, package store): it is deleted
// again, not sent. hdr is the entry's header when the sink passed it along; nil: the
// frame's header is decoded here. An entry that does not decode can never
// be acknowledged: it is dead-lettered at once.
func (o *Outbox) admit(seq uint64, frame []byte, hdr *slipstream.Header, fromStore bool) {
	w := &o.w
	w.cursor = max(w.cursor, seq+1)
	if w.bySeq[seq] != nil {
		return
	}
	if w.done.has(seq) {
		if fromStore {
			o.log.Warn("an outbox entry the writer had completed is back in the store (Badger value-log GC); deleting it again", "seq", seq)
			w.deletes = append(w.deletes, seq)
			w.recountDue = true // the count of pending entries may include it
		}
		return
	}
	e := &entry{seq: seq, frame: frame, spent: w.carry[seq]}
	delete(w.carry, seq)
	if hdr == nil {
		h, err := slipstream.DecodeHeader(frame)
		if err != nil {
			e.typ = "invalid"
			o.deadLetter(e, "undecodable outbox entry: "+err.Error())
			return
		}
		hdr = &h
	}
	e.id, e.key = hdr.MessageID, hdr.ClusterGroupID+"\x00"+hdr.MessageID
	delete(o.w.lately, e.key) // loaded again: its ACK finds it
	e.typ, e.timestamp, e.traceparent, e.tracestate = string(hdr.Type), hdr.Timestamp, hdr.TraceParent, hdr.TraceState
	w.ready = append(w.ready, e)
	w.bySeq[seq] = e
	if first := w.byKey[e.key]; first != nil {
		for first.nextSameKey != nil {
			first = first.nextSameKey
		}
		first.nextSameKey = e
	} else {
		w.byKey[e.key] = e
	}
}

// readyLen counts the ready entries still to send, dropping gone ones at
// the head.
func (o *Outbox) readyLen() int {
	w := &o.w
	for w.head < len(w.ready) && w.ready[w.head].gone {
		w.ready[w.head] = nil
		w.head++
	}
	if w.head == len(w.ready) {
		w.ready, w.head = w.ready[:0], 0
	}
	return len(w.ready) - w.head
}

// send sends ready entries in order while the window has room.
func (o *Outbox) send() {
	w := &o.w
	for w.conn != nil && (!w.acks || len(w.inflight) < o.s.cfg.Window) && o.readyLen() > 0 {
		e := w.ready[w.head]
		if !o.transmit(e) {
			return
		}
		w.ready[w.head] = nil
		w.head++
		if w.acks {
			w.inflight[e.seq] = e
			continue
		}
		o.remove(e) // fire and forget
		o.deleted(e)
		o.delivered(e, time.Now())
	}
}

// transmit hands e's frame to the connection; false when the session ended.
// With tracing on, each send is a span, a child of the trace context stored
// with the message (this instance's first stage span).
func (o *Outbox) transmit(e *entry) bool {
	w := &o.w
	again := e.sent || e.spent > 0
	span := o.sendSpan(e, again)
	if err := w.conn.SendData(w.sess, e.frame); err != nil {
		if span != nil {
			span.SetStatus(codes.Error, err.Error())
			span.End()
		}
		if w.sess.Err() == nil { // the connection failed, not the session
			o.lost()
		}
		return false
	}
	if span != nil {
		span.End()
	}
	now := time.Now()
	c := o.counters(e.typ)
	if again {
		o.redelivered.Inc()
		c.redelivered.Inc()
	} else {
		o.sent.Inc()
		c.sent.Inc()
	}
	e.sent, e.held, e.sentAt = true, false, now
	e.due = now.Add(o.backoff(e.level))
	if w.nextDue.IsZero() || e.due.Before(w.nextDue) {
		w.nextDue = e.due
	}
	return true
}

// traceContext reads the W3C trace context stored with a message.
var traceContext = propagation.TraceContext{}

// sendSpan starts the span of one send of e (nil when tracing is off).
func (o *Outbox) sendSpan(e *entry, again bool) trace.Span {
	t := o.s.tracer
	if t == nil {
		return nil
	}
	ctx := context.Background()
	if e.traceparent != "" {
		ctx = traceContext.Extract(ctx, propagation.MapCarrier{"traceparent": e.traceparent, "tracestate": e.tracestate})
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() && !sc.IsSampled() {
			return nil // not sampled upstream: no span (it would not record)
		}
	}
	_, span := t.Start(ctx, "send", trace.WithSpanKind(trace.SpanKindProducer))
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("slipstream.link", o.id),
			attribute.String("slipstream.message_id", e.id),
			attribute.String("slipstream.type", e.typ),
			attribute.Int("slipstream.attempt", e.spent+1),
			attribute.Bool("slipstream.redelivery", again),
			attribute.Int64("slipstream.seq", int64(e.seq)),
		)
	}
	return span
}

// doneSet is a bounded set of seqs: the latest doneCap added.
type doneSet struct {
	ring []uint64
	next int
	set  map[uint64]struct{}
}

// doneCap bounds doneSet. A Notify comes a few stages after its commit,
// while completing a delivery takes a round trip to the receiver, so a
// writer completes few entries, if any, between the two; 256 is ample, and
// costs a link that delivers ~7 KiB (an idle link nothing; the set goes
// with the session).
const doneCap = 256

func (d *doneSet) add(seq uint64) {
	if d.set == nil {
		d.set = make(map[uint64]struct{})
	}
	if len(d.ring) < doneCap {
		d.ring = append(d.ring, seq)
	} else {
		delete(d.set, d.ring[d.next])
		d.ring[d.next] = seq
		d.next = (d.next + 1) % doneCap
	}
	d.set[seq] = struct{}{}
}

func (d *doneSet) has(seq uint64) bool {
	_, ok := d.set[seq]
	return ok
}

// reset empties the set and lets its memory go.
func (d *doneSet) reset() { *d = doneSet{} }
