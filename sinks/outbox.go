package sinks

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/telemetry"
)

// Sizes of an outbox writer.
const (
	// memoryBytes bounds the bytes of the memory queue of one link.
	memoryBytes = 1 << 20
	// pageSize is how many entries the writer reads from the store at once.
	pageSize = 256
	// maxFeedback bounds the ACKs and ERRs waiting for the writer; more are
	// dropped (the delivery is then re-sent and acknowledged again).
	maxFeedback = 8192
	// maxLate bounds the seqs remembered while the writer counts its outbox
	// (see recount); beyond it the count may be a little high.
	maxLate = 1 << 16
)

// Outbox is one link's durable, ordered writer (link.Outbox). The link
// registry makes it through the websocket sink's factory; the sink (Notify),
// the ack stage (Acked, Refused) and the sources (Connected, Disconnected,
// through the registry) feed it. None of its methods blocks for long: they
// record what happened and wake the writer goroutine, which owns the
// network and the store (see writer.go).
type Outbox struct {
	s       *WebSocket
	link    *link.Link
	id      string
	log     *slog.Logger
	durable bool // exported in the outbox gauges

	sent, acked, redelivered, dead prometheus.Counter
	evictedCount, evictedAge       prometheus.Counter

	// pending is the number of the link's entries in the store: counted by
	// the writer at start (recount), then +1 per Notify of an entry the count
	// did not see and -1 per entry the writer deletes or dead-letters. It can
	// be off after a failed store write, after more than maxLate
	// notifications during a count, or (one low) when an entry committed out
	// of order lands right behind a count; the writer recounts on its
	// periodic pass when that matters.
	pending atomic.Int64
	// overLimit is set by Notify when pending exceeds max_pending: the
	// writer enforces the limit (at most once a second).
	overLimit atomic.Bool
	// headMu serialises head reads (the gauges, the limits passes).
	headMu sync.Mutex

	wake   chan struct{} // capacity 1: "something changed"
	exited chan struct{} // closed when the writer goroutine returns

	// The inbox, guarded by mu.
	mu           sync.Mutex
	mem          []memEntry // notified entries, in seq order (while behind: since the writer's current read began)
	memBytes     int
	behind       bool     // the writer reads the store
	memLost      bool     // behind: mem misses entries notified since the current read began; Notify drops copies
	lastNotified uint64   // highest seq notified
	rewind       uint64   // lowest seq notified out of order (0: none)
	floor        uint64   // no entry of the link below this seq is in the store (see head)
	floorLow     uint64   // lowest seq notified while head reads the store (0: none)
	floorRead    bool     // head is reading
	counting     bool     // the writer is counting the store: Notify records seqs in late
	late         []uint64 // seqs notified while counting
	lateExtra    int      // notifications while counting beyond maxLate
	counted      uint64   // the highest seq the last count saw: a later Notify at or below it was counted
	feedback     []feedback
	conn         link.Conn          // the live connection, nil when down
	gen          uint64             // bumped by every Connected / Disconnected
	sessCancel   context.CancelFunc // cancels SendData of the current session
	started      bool
	running      bool // the writer goroutine runs (not parked; see park)
	closed       bool
	ctx          context.Context    // the writer's, for a resume
	cancel       context.CancelFunc // stops the writer
	closeOnce    sync.Once

	w writer // the writer goroutine's own state
}

var _ link.Outbox = (*Outbox)(nil)

// memEntry is a notified entry kept in memory, with its header when the
// sink had it (hdr.MessageID != "": admit need not decode the frame).
type memEntry struct {
	seq   uint64
	frame []byte
	hdr   slipstream.Header
}

// feedback is an ACK (code == "") or an ERR of the link.
type feedback struct {
	cluster, id  string
	code, reason string
}

// newOutbox makes l's outbox (not started). Called by the link registry with
// no link lock held.
func newOutbox(s *WebSocket, l *link.Link) *Outbox {
	kind := "client"
	if l.IsPeer() {
		kind = "peer"
	}
	d := s.m.deliveries
	o := &Outbox{
		s:            s,
		link:         l,
		id:           l.ID(),
		log:          s.log.With("link", l.ID()),
		sent:         d.WithLabelValues(kind, "sent"),
		acked:        d.WithLabelValues(kind, "acked"),
		redelivered:  d.WithLabelValues(kind, "redelivered"),
		dead:         d.WithLabelValues(kind, "dead_lettered"),
		evictedCount: s.m.evictions.WithLabelValues(telemetry.LinkLabel(l.ID(), l.Durable()), "max_pending"),
		evictedAge:   s.m.evictions.WithLabelValues(telemetry.LinkLabel(l.ID(), l.Durable()), "max_age"),
		durable:      l.Durable(),
		wake:         make(chan struct{}, 1),
		exited:       make(chan struct{}),
		behind:       true, // entries may wait in the store from before
		memLost:      true,
		counting:     true, // until the writer has counted them (recount)
	}
	o.w.init()
	return o
}

// start starts the writer goroutine under ctx (the sink's Start context).
func (o *Outbox) start(ctx context.Context) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.started || o.closed {
		return
	}
	o.started, o.running = true, true
	o.ctx, o.cancel = context.WithCancel(ctx)
	go o.run(o.ctx, true)
}

// closeNow marks an outbox that was never started as closed.
func (o *Outbox) closeNow() {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
}

// signalLocked wakes the writer without blocking, starting its goroutine
// again if it parked (see park). Called with mu held, which park holds
// while it looks for the wake token: either park sees the token and goes
// on, or it parked before and this resumes it.
func (o *Outbox) signalLocked() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
	if o.started && !o.running && !o.closed {
		o.running = true
		go o.run(o.ctx, false)
	}
}

// dropMemLocked switches to reading the store. Called with mu held.
func (o *Outbox) dropMemLocked() {
	o.behind, o.memLost = true, true
	clear(o.mem) // let the frames go
	o.mem = o.mem[:0]
	o.memBytes = 0
}

// Notify implements link.Outbox: entry seq of the link's outbox, holding
// frame, is committed to the store. The sink calls it in seq order from the
// fanout stage's goroutine; frame is shared and never modified. The frame is
// kept in memory only while the writer keeps up and the link is up;
// otherwise the writer will read the entry from the store.
func (o *Outbox) Notify(seq uint64, frame []byte) { o.notify(seq, frame, nil) }

// notify is Notify with the message's header when the caller has it (the
// sink has the decoded message), so that the writer does not decode the
// frame again; nil: it will.
func (o *Outbox) notify(seq uint64, frame []byte, m *slipstream.Message) {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return
	}
	if o.counting {
		if len(o.late) < maxLate {
			o.late = append(o.late, seq)
		} else {
			o.lateExtra++
		}
	} else if seq > o.counted {
		if n := o.pending.Add(1); o.s.cfg.MaxPending > 0 && n > int64(o.s.cfg.MaxPending) {
			o.overLimit.Store(true)
		}
	}
	if seq < o.floor {
		o.floor = seq
	}
	if o.floorRead && (o.floorLow == 0 || seq < o.floorLow) {
		o.floorLow = seq
	}
	if seq <= o.lastNotified && (o.rewind == 0 || seq < o.rewind) {
		o.rewind = seq // out of order: make the writer look back
	}
	o.lastNotified = max(o.lastNotified, seq)
	switch {
	case o.behind && o.memLost:
	case o.conn == nil || len(o.mem) >= o.s.cfg.MemoryQueue || o.memBytes+len(frame) > memoryBytes:
		o.dropMemLocked()
	default:
		me := memEntry{seq: seq, frame: frame}
		if m != nil {
			me.hdr = slipstream.HeaderOf(m)
		}
		o.mem = append(o.mem, me)
		o.memBytes += len(frame)
	}
	o.signalLocked()
	o.mu.Unlock()
}

// Acked implements link.Outbox: the link acknowledged (cluster, id). Called
// from the ack stage's goroutine; it never blocks.
func (o *Outbox) Acked(cluster, id string) { o.feed(feedback{cluster: cluster, id: id}) }

// Refused implements link.Outbox: the link answered message id with ERR
// code and reason. Called from the ack stage's goroutine; it never blocks.
func (o *Outbox) Refused(id, code, reason string) {
	if code == "" {
		code = "unknown"
	}
	o.feed(feedback{id: id, code: code, reason: reason})
}

func (o *Outbox) feed(f feedback) {
	o.mu.Lock()
	if o.closed || len(o.feedback) >= maxFeedback {
		o.mu.Unlock()
		return
	}
	o.feedback = append(o.feedback, f)
	o.signalLocked()
	o.mu.Unlock()
}

// Connected implements link.Outbox: c is the link's live connection. Called
// by the registry (from a source's goroutine) after Attach. Every call
// starts a new session: the writer re-sends everything pending from the
// store, in order, and reads the link's Acks again.
func (o *Outbox) Connected(c link.Conn) {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return
	}
	o.switchLocked(c)
	o.signalLocked()
	o.mu.Unlock()
}

// Disconnected implements link.Outbox: c is no longer the link's live
// connection. Called by the registry; a SendData blocked on c returns.
func (o *Outbox) Disconnected(c link.Conn) {
	o.mu.Lock()
	if o.closed || o.conn != c {
		o.mu.Unlock()
		return
	}
	o.switchLocked(nil)
	o.signalLocked()
	o.mu.Unlock()
}

// switchLocked starts a new session on c (nil: down). Called with mu held.
func (o *Outbox) switchLocked(c link.Conn) {
	if o.sessCancel != nil {
		o.sessCancel()
		o.sessCancel = nil
	}
	o.conn = c
	o.gen++
	o.dropMemLocked()
}

// Close implements link.Outbox: it stops the writer and returns once its
// goroutine has exited; pending entries stay in the store. Called by the
// registry (an ephemeral link left, or shutdown) and by the sink's Close;
// later calls do nothing.
func (o *Outbox) Close() {
	o.closeOnce.Do(func() {
		o.mu.Lock()
		o.closed = true
		started, running, cancel := o.started, o.running, o.cancel
		if o.sessCancel != nil {
			o.sessCancel()
			o.sessCancel = nil
		}
		o.mu.Unlock()
		if started {
			cancel()
			if !running { // parked: nothing runs it again (closed)
				o.finish()
			}
			<-o.exited
		}
		o.s.forget(o)
	})
}
