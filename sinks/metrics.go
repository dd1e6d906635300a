package sinks

import (
	"math"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/telemetry"
)

// metrics are the sink's instruments, shared by its outboxes (and by every
// websocket sink registered on one registry).
type metrics struct {
	deliveries *prometheus.CounterVec   // kind (peer|client), outcome
	evictions  *prometheus.CounterVec   // link, limit (max_pending|max_age)
	out        *prometheus.CounterVec   // type, link, outcome (sent|redelivered|acked|dead_lettered)
	rtt        *prometheus.HistogramVec // link
	age        *prometheus.HistogramVec // point (telemetry.NewMessageAge)
	delivered  prometheus.Observer      // age{point="delivered"}
	outboxes   *outboxGauges            // slipstream_outbox_depth, slipstream_outbox_oldest_seconds
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slipstream_link_deliveries_total",
			Help: "Deliveries to links by link kind (peer, client) and outcome: sent, acked, redelivered, dead_lettered.",
		}, []string{"kind", "outcome"}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slipstream_outbox_limit_evictions_total",
			Help: "Deliveries moved from a link's outbox to the dead-letter store because the outbox exceeded a limit (max_pending or max_age).",
		}, []string{"link", "limit"}),
		out: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slipstream_messages_out_total",
			Help: "Messages sent to links, by type, link (ephemeral: every unnamed client) and outcome: sent (first send), redelivered, acked, dead_lettered (no ACK after max_attempts, refused, undecodable; outbox-limit evictions are in slipstream_outbox_limit_evictions_total).",
		}, []string{"type", "link", "outcome"}),
		rtt: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "slipstream_ack_rtt_seconds",
			Help:    "Time from the last send of a delivery to its ACK, by link (ephemeral: every unnamed client).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"link"}),
		age:      telemetry.NewMessageAge(),
		outboxes: newOutboxGauges(),
	}
	if reg == nil {
		m.delivered = m.age.WithLabelValues(telemetry.AgeDelivered)
		return m, nil
	}
	var err error
	if m.deliveries, err = telemetry.RegisterShared(reg, m.deliveries); err != nil {
		return nil, err
	}
	if m.evictions, err = telemetry.RegisterShared(reg, m.evictions); err != nil {
		return nil, err
	}
	if m.out, err = telemetry.RegisterShared(reg, m.out); err != nil {
		return nil, err
	}
	if m.rtt, err = telemetry.RegisterShared(reg, m.rtt); err != nil {
		return nil, err
	}
	if m.age, err = telemetry.RegisterShared(reg, m.age); err != nil {
		return nil, err
	}
	m.delivered = m.age.WithLabelValues(telemetry.AgeDelivered)
	if m.outboxes, err = telemetry.RegisterShared(reg, m.outboxes); err != nil {
		return nil, err
	}
	return m, nil
}

// outboxGauges reports, at scrape time, each durable link's outbox depth
// (the writer's exact count of its entries in the store) and the age of its
// oldest entry (now minus the timestamp of the message of the entry with the
// lowest seq: one store read per non-empty outbox per scrape).
type outboxGauges struct {
	depth, oldest *prometheus.Desc

	mu    sync.Mutex
	sinks []*WebSocket
}

var _ prometheus.Collector = (*outboxGauges)(nil)

func newOutboxGauges() *outboxGauges {
	return &outboxGauges{
		depth: prometheus.NewDesc("slipstream_outbox_depth",
			"Deliveries waiting in the outbox of each durable link (sent but unacknowledged ones included).",
			[]string{"link"}, nil),
		oldest: prometheus.NewDesc("slipstream_outbox_oldest_seconds",
			"Age of the oldest delivery in the outbox of each durable link, from its message's timestamp; 0 when the outbox is empty.",
			[]string{"link"}, nil),
	}
}

func (g *outboxGauges) add(s *WebSocket) {
	g.mu.Lock()
	g.sinks = append(g.sinks, s)
	g.mu.Unlock()
}

func (g *outboxGauges) remove(s *WebSocket) {
	g.mu.Lock()
	g.sinks = slices.DeleteFunc(g.sinks, func(x *WebSocket) bool { return x == s })
	g.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (g *outboxGauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- g.depth
	ch <- g.oldest
}

// Collect implements prometheus.Collector. Called by the registry on each
// scrape, concurrently with the writers.
func (g *outboxGauges) Collect(ch chan<- prometheus.Metric) {
	g.mu.Lock()
	sinks := slices.Clone(g.sinks)
	g.mu.Unlock()
	now := time.Now()
	for _, s := range sinks {
		for _, o := range s.durable() {
			n := max(o.pending.Load(), 0)
			age := 0.0
			if n > 0 {
				if ts := o.oldestTimestamp(); ts > 0 {
					age = max(now.Sub(time.UnixMilli(ts)).Seconds(), 0)
				}
			}
			ch <- prometheus.MustNewConstMetric(g.depth, prometheus.GaugeValue, float64(n), o.id)
			ch <- prometheus.MustNewConstMetric(g.oldest, prometheus.GaugeValue, age, o.id)
		}
	}
}

// oldestTimestamp reads the timestamp (ms) of the message of the outbox's
// first entry; 0 when the outbox is empty, the store cannot be read or the
// message has no timestamp.
func (o *Outbox) oldestTimestamp() int64 {
	en, ok := o.head(false)
	if !ok {
		return 0
	}
	return frameTimestamp(en.Frame)
}

// head reads the outbox's first entry (false: empty or unreadable). It reads
// from the floor, a seq below which the store holds no entry of the link (or
// from the beginning, with all), and moves the floor to what it found: a busy
// outbox leaves a trail of deleted keys behind its head that Badger would
// otherwise step over on every read, until compaction drops them.
//
// The floor stays a lower bound: entries are committed before they are
// notified, so an entry that the read did not see was notified after the
// read began, and Notify lowers the floor to it (floorLow covers a Notify
// that comes while the read runs). An acknowledged entry that Badger's
// value-log GC brings back is never notified: only a read with all (the
// writer's periodic rescan) finds it below the floor.
func (o *Outbox) head(all bool) (store.OutboxEntry, bool) {
	o.headMu.Lock()
	defer o.headMu.Unlock()
	o.mu.Lock()
	from := o.floor
	if all {
		from = 0
	}
	o.floorRead, o.floorLow = true, 0
	o.mu.Unlock()
	page, err := o.s.store.ReadOutbox(o.id, from, 1)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.floorRead = false
	if err != nil || len(page) == 0 {
		return store.OutboxEntry{}, false
	}
	next := page[0].Seq
	if o.floorLow != 0 && o.floorLow < next {
		next = o.floorLow
	}
	o.floor = next
	return page[0], true
}

// floorSeq is the current floor (see head).
func (o *Outbox) floorSeq() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.floor
}

// frameTimestamp is the timestamp (ms) of an encoded message; 0 when it has
// none or does not decode.
func frameTimestamp(frame []byte) int64 {
	m, err := slipstream.Decode(frame, &slipstream.Limits{MaxFrame: math.MaxInt})
	if err != nil {
		return 0
	}
	return m.Timestamp
}
