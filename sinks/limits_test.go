package sinks

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/testutil"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// stampedFrame is message i with a timestamp.
func stampedFrame(i int, ts time.Time) []byte {
	return fmt.Appendf(nil, `{"type":"SK","messageId":"m%d","clusterGroupId":"c1","key":"k","value":%d,"timestamp":%d}`,
		i, i, ts.UnixMilli())
}

// publishFrames stores frames for l in one write and notifies the sink, as
// persist and fanout do; it returns their seqs.
func (h *harness) publishFrames(l *link.Link, frames [][]byte) []uint64 {
	h.t.Helper()
	seqs := make([]uint64, len(frames))
	err := h.st.DB().Update(func(txn *badger.Txn) error {
		for i, f := range frames {
			seqs[i] = l.NextSeq()
			if err := txn.Set(store.OutboxKey(l.ID(), seqs[i]), f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		h.t.Fatal(err)
	}
	batch := make([]*pipeline.Envelope, len(frames))
	for i, f := range frames {
		batch[i] = &pipeline.Envelope{Status: pipeline.Accepted, Encoded: f, Recipients: []string{l.ID()}, Seqs: []uint64{seqs[i]}}
	}
	if err := h.sink.Deliver(context.Background(), batch); err != nil {
		h.t.Fatal(err)
	}
	return seqs
}

// gauge reads a series of the instance's registry (NaN when absent).
func (h *harness) gauge(name string, labels ...string) float64 {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue metric
				}
			}
			switch {
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			}
		}
	}
	return math.NaN()
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue() == value
		}
	}
	return false
}

func dlqSeqs(ds []store.DeadLetter) []uint64 {
	out := make([]uint64, len(ds))
	for i, d := range ds {
		out[i] = d.Seq
	}
	return out
}

func seqRange(first, last uint64) []uint64 {
	var out []uint64
	for s := first; s <= last; s++ {
		out = append(out, s)
	}
	return out
}

// An outbox over max_pending loses exactly its oldest entries to the
// dead-letter store; the rest are still delivered, in order, when the link
// comes back.
func TestMaxPendingEvictsTheOldest(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) { c.MaxPending = 10 })
	defer h.close()

	l, err := h.links.Ensure(link.Spec{ID: "pi-1", Acks: true}) // known, offline
	if err != nil {
		t.Fatal(err)
	}
	h.publish(l, 1, 15)
	h.publish(l, 16, 25)
	got := h.dlq("pi-1", 15)
	if want := seqRange(1, 15); !slices.Equal(dlqSeqs(got), want) {
		t.Fatalf("dead-lettered seqs %v, want %v", dlqSeqs(got), want)
	}
	for i, d := range got {
		if d.Reason != "outbox limit: max_pending 10 exceeded" || string(d.Message) != string(frame(i+1)) {
			t.Fatalf("dead letter %d = %+v", i, d)
		}
	}
	if n := h.pending("pi-1"); n != 10 {
		t.Fatalf("%d entries pending, want 10", n)
	}
	// Counted by the writer once the pass that moved them is over.
	testutil.CheckFor(t, wait, time.Millisecond, func() error {
		if d := h.gauge("slipstream_outbox_depth", "link", "pi-1"); d != 10 {
			return fmt.Errorf("slipstream_outbox_depth = %v, want 10", d)
		}
		if c := h.counter("dead_lettered"); c != 15 {
			return fmt.Errorf("dead_lettered = %v, want 15", c)
		}
		if c := h.gauge("slipstream_outbox_limit_evictions_total", "link", "pi-1", "limit", "max_pending"); c != 15 {
			return fmt.Errorf("evictions{max_pending} = %v, want 15", c)
		}
		return nil
	})

	rec := recorder{then: h.autoAck("pi-1")}
	h.attach("pi-1", true, rec.conn())
	testutil.CheckFor(t, wait, 5*time.Millisecond, rec.wantSent(ids(16, 25)))
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if p := h.pending("pi-1"); p != 0 {
			return fmt.Errorf("%d entries still pending", p)
		}
		if d := h.gauge("slipstream_outbox_depth", "link", "pi-1"); d != 0 {
			return fmt.Errorf("depth gauge %v", d)
		}
		return nil
	})
}

// A connected link that keeps up never hits max_pending; one that lags
// behind loses the oldest entries, in flight or not, and gets the rest in
// order.
func TestMaxPendingWhileConnected(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) {
		c.MaxPending, c.Window, c.MaxAttempts = 5, 3, 0
		c.AckTimeout, c.BackoffMax = time.Hour, time.Hour
	})
	defer h.close()

	var rec recorder // never acknowledges
	l := h.attach("pi-1", true, rec.conn())
	h.publish(l, 1, 20)
	got := h.dlq("pi-1", 15)
	if want := seqRange(1, 15); !slices.Equal(dlqSeqs(got), want) {
		t.Fatalf("dead-lettered seqs %v, want %v", dlqSeqs(got), want)
	}
	// m1..m3 may have been in flight when they were evicted (the writer
	// may also have counted before it sent): late ACKs for them are
	// ignored; the window moves on to what is left, in order.
	for i := 1; i <= 3; i++ {
		l.Outbox().Acked("c1", fmt.Sprintf("m%d", i))
	}
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		sent := rec.sent()
		if len(sent) < 3 || !slices.Equal(sent[len(sent)-3:], ids(16, 18)) {
			return fmt.Errorf("sent %v, want m16 m17 m18 last", sent)
		}
		if len(sent) != 3 && !slices.Equal(sent[:3], ids(1, 3)) {
			return fmt.Errorf("sent %v, want m1 m2 m3 (evicted in flight) or nothing before m16", sent)
		}
		return nil
	})
	for i := 16; i <= 18; i++ {
		l.Outbox().Acked("c1", fmt.Sprintf("m%d", i))
	}
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if sent := rec.sent(); len(sent) < 5 || !slices.Equal(sent[len(sent)-5:], ids(16, 20)) {
			return fmt.Errorf("sent %v, want m16..m20 last", sent)
		}
		return nil
	})
	for i := 19; i <= 20; i++ {
		l.Outbox().Acked("c1", fmt.Sprintf("m%d", i))
	}
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if p := h.pending("pi-1"); p != 0 {
			return fmt.Errorf("%d entries still pending (sent %v)", p, rec.sent())
		}
		return nil
	})
}

// Entries whose message is older than max_age move to the dead-letter store
// on the periodic pass; the walk stops at the first young one.
func TestMaxAgeEvictsOldEntries(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) {
		c.MaxAge, c.limitEvery = time.Hour, 20*time.Millisecond
	})
	defer h.close()

	l, err := h.links.Ensure(link.Spec{ID: "pi-1", Acks: true})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	old, young := now.Add(-2*time.Hour), now.Add(-time.Minute)
	var frames [][]byte
	for i := 1; i <= 30; i++ { // more than agePeek
		frames = append(frames, stampedFrame(i, old))
	}
	frames = append(frames, stampedFrame(31, young), stampedFrame(32, young),
		stampedFrame(33, old)) // behind a young one: kept
	h.publishFrames(l, frames)

	got := h.dlq("pi-1", 30)
	if want := seqRange(1, 30); !slices.Equal(dlqSeqs(got), want) {
		t.Fatalf("dead-lettered seqs %v, want %v", dlqSeqs(got), want)
	}
	if got[0].Reason != "outbox limit: older than max_age" {
		t.Fatalf("reason %q", got[0].Reason)
	}
	testutil.CheckFor(t, wait, time.Millisecond, func() error { // counted once the pass is over
		if c := h.gauge("slipstream_outbox_limit_evictions_total", "link", "pi-1", "limit", "max_age"); c != 30 {
			return fmt.Errorf("evictions{max_age} = %v, want 30", c)
		}
		return nil
	})
	// The oldest remaining entry is m31, a minute old.
	if age := h.gauge("slipstream_outbox_oldest_seconds", "link", "pi-1"); age < 59 || age > 120 {
		t.Errorf("slipstream_outbox_oldest_seconds = %v, want about 60", age)
	}

	rec := recorder{then: h.autoAck("pi-1")}
	h.attach("pi-1", true, rec.conn())
	testutil.CheckFor(t, wait, 5*time.Millisecond, rec.wantSent(ids(31, 33)))
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if age := h.gauge("slipstream_outbox_oldest_seconds", "link", "pi-1"); age != 0 {
			return fmt.Errorf("oldest_seconds %v after every ACK", age)
		}
		return nil
	})
}

// The depth and age gauges start from what the store holds after a restart,
// and entries notified while the writer counts are counted once.
func TestOutboxGaugesAfterRestart(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := t.TempDir()
	st, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	links, err := link.NewRegistry(st, self, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	l, err := links.Ensure(link.Spec{ID: "pi-1", Acks: true})
	if err != nil {
		t.Fatal(err)
	}
	err = st.DB().Update(func(txn *badger.Txn) error {
		for i := 1; i <= 40; i++ {
			if err := txn.Set(store.OutboxKey("pi-1", l.NextSeq()), stampedFrame(i, time.Now().Add(-time.Hour))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	links.Close()
	st.Close()

	h := newHarness(t, dir, nil)
	defer h.close()
	l = h.links.Get("pi-1")
	h.publish(l, 41, 45) // may race the writer's first count
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if d := h.gauge("slipstream_outbox_depth", "link", "pi-1"); d != 45 {
			return fmt.Errorf("depth %v, want 45", d)
		}
		return nil
	})
	if age := h.gauge("slipstream_outbox_oldest_seconds", "link", "pi-1"); age < 3599 || age > 3700 {
		t.Errorf("oldest_seconds = %v, want about 3600", age)
	}
	// A notification that comes after the count for an entry the count saw
	// (committed before it) is not counted twice.
	env := &pipeline.Envelope{Status: pipeline.Accepted, Encoded: frame(40), Recipients: []string{"pi-1"}, Seqs: []uint64{40}}
	if err := h.sink.Deliver(context.Background(), []*pipeline.Envelope{env}); err != nil {
		t.Fatal(err)
	}
	h.publish(l, 46, 46)
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if d := h.gauge("slipstream_outbox_depth", "link", "pi-1"); d != 46 {
			return fmt.Errorf("depth %v, want 46", d)
		}
		return nil
	})
}

// With no limits, nothing is evicted however long or old the outbox.
func TestNoLimits(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) {
		c.MaxPending, c.MaxAge, c.limitEvery = 0, 0, 10*time.Millisecond
	})
	defer h.close()
	l, err := h.links.Ensure(link.Spec{ID: "pi-1", Acks: true})
	if err != nil {
		t.Fatal(err)
	}
	h.publishFrames(l, [][]byte{stampedFrame(1, time.Unix(1, 0)), stampedFrame(2, time.Unix(2, 0))})
	time.Sleep(100 * time.Millisecond) // several periods
	if got, _ := h.st.ListDLQ("", 0); len(got) != 0 {
		t.Fatalf("dead letters %+v, want none", got)
	}
}

// The outbox's head is read from a floor that follows it past completed
// entries, and that a late commit below it lowers again.
func TestHeadFloor(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, t.TempDir(), nil)
	defer h.close()
	l, err := h.links.Ensure(link.Spec{ID: "pi-1", Acks: true})
	if err != nil {
		t.Fatal(err)
	}
	ob := l.Outbox().(*Outbox)
	h.publish(l, 1, 10)
	if en, ok := ob.head(false); !ok || en.Seq != 1 || ob.floorSeq() != 1 {
		t.Fatalf("head = %d %v, floor %d; want 1", en.Seq, ok, ob.floorSeq())
	}
	if err := h.st.DeleteOutbox("pi-1", []uint64{1, 2, 3, 4, 5}); err != nil {
		t.Fatal(err)
	}
	if en, ok := ob.head(false); !ok || en.Seq != 6 || ob.floorSeq() != 6 {
		t.Fatalf("head = %d %v, floor %d; want 6", en.Seq, ok, ob.floorSeq())
	}
	h.commit(l, 3, 3) // committed late, below the floor (a replay racing persist)
	if en, ok := ob.head(false); !ok || en.Seq != 3 {
		t.Fatalf("head = %d %v after a late commit of seq 3", en.Seq, ok)
	}
}

// An acknowledged entry that reappears in the store behind the writer (what
// Badger's value-log GC can do) is found by the periodic rescan without
// waiting for a reconnection: deleted again if the writer completed it in
// its current session (it knows), else sent again (receivers deduplicate
// it) and deleted on its ACK.
func TestRescanHandlesAnEntryThatCameBack(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) { c.limitEvery = 20 * time.Millisecond })
	defer h.close()
	comeBack := func(seq uint64, i int) {
		t.Helper()
		if err := h.st.DB().Update(func(txn *badger.Txn) error { return txn.Set(store.OutboxKey("pi-1", seq), frame(i)) }); err != nil {
			t.Fatal(err)
		}
	}
	drained := func() error {
		if p := h.pending("pi-1"); p != 0 {
			return fmt.Errorf("%d entries still pending", p)
		}
		if d := h.gauge("slipstream_outbox_depth", "link", "pi-1"); d != 0 {
			return fmt.Errorf("depth gauge %v", d)
		}
		return nil
	}
	rec := recorder{then: h.autoAck("pi-1")}
	c1 := rec.conn()
	l := h.attach("pi-1", true, c1)
	h.publish(l, 1, 5)
	testutil.CheckFor(t, wait, time.Millisecond, rec.wantSent(ids(1, 5)))
	h.waitDrained("pi-1")

	// Seq 2 comes back, unnotified, in the session that completed it.
	comeBack(2, 2)
	testutil.CheckFor(t, wait, time.Millisecond, drained)
	if got := rec.sent(); !slices.Equal(got, ids(1, 5)) {
		t.Fatalf("sent %v, want %v: m2 was acknowledged in this session", got, ids(1, 5))
	}

	// After a reconnection (a new session), seq 3 comes back: the writer
	// cannot tell it from a pending entry, and sends it.
	next := recorder{then: h.autoAck("pi-1")}
	h.links.Detach(l, c1)
	l = h.attach("pi-1", true, next.conn())
	time.Sleep(50 * time.Millisecond) // the new session's first read
	comeBack(3, 3)
	testutil.CheckFor(t, wait, time.Millisecond, next.wantSent([]string{"m3"}))
	testutil.CheckFor(t, wait, time.Millisecond, drained)
}
