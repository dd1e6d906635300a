package sinks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"go.uber.org/goleak"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/testutil"
	"github.com/slipstream-sync/slipstream/pipeline"
)

const wait = 10 * time.Second

func TestConfigValidate(t *testing.T) {
	kind, _ := pipeline.Lookup(pipeline.ClassSink, "websocket")
	tests := []struct {
		name  string
		mut   func(*WebSocketConfig)
		field string
	}{
		{"defaults", func(*WebSocketConfig) {}, ""},
		{"ack_timeout", func(c *WebSocketConfig) { c.AckTimeout = 0 }, "ack_timeout"},
		{"max_attempts", func(c *WebSocketConfig) { c.MaxAttempts = -1 }, "max_attempts"},
		{"window", func(c *WebSocketConfig) { c.Window = 0 }, "window"},
		{"memory_queue", func(c *WebSocketConfig) { c.MemoryQueue = -1 }, "memory_queue"},
		{"backoff_max", func(c *WebSocketConfig) { c.BackoffMax = time.Second }, "backoff_max"},
		{"max_pending", func(c *WebSocketConfig) { c.MaxPending = -1 }, "max_pending"},
		{"max_age", func(c *WebSocketConfig) { c.MaxAge = -time.Second }, "max_age"},
		{"unlimited", func(c *WebSocketConfig) { c.MaxPending, c.MaxAge = 0, 0 }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := kind.NewConfig().(*WebSocketConfig)
			tt.mut(cfg)
			err := cfg.Validate()
			var fe *pipeline.FieldError
			switch {
			case tt.field == "" && err != nil:
				t.Fatalf("Validate() = %v", err)
			case tt.field != "" && (err == nil || !asFieldError(err, &fe) || fe.Field != tt.field):
				t.Fatalf("Validate() = %v, want a FieldError on %s", err, tt.field)
			}
		})
	}
}

func asFieldError(err error, fe **pipeline.FieldError) bool {
	e, ok := err.(*pipeline.FieldError)
	*fe = e
	return ok
}

func TestDeliversInOrderAndDeletesOnAck(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, t.TempDir(), nil)
	defer h.close()

	rec := recorder{then: h.autoAck("pi-1")}
	l := h.attach("pi-1", true, rec.conn())
	h.publish(l, 1, 100)
	// Envelopes that are not accepted, or whose recipient left before
	// persist (seq 0), are not delivered.
	_ = h.sink.Deliver(context.Background(), []*pipeline.Envelope{
		{Status: pipeline.Duplicate, Encoded: frame(900), Recipients: []string{"pi-1"}, Seqs: []uint64{900}},
		{Status: pipeline.Accepted, Encoded: frame(901), Recipients: []string{"pi-1", "gone"}, Seqs: []uint64{0, 7}},
	})

	testutil.CheckFor(t, wait, 5*time.Millisecond, rec.wantSent(ids(1, 100)))
	h.waitDrained("pi-1")
	if got := h.counter("sent"); got != 100 {
		t.Errorf("sent counter = %v, want 100", got)
	}
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if got := h.counter("acked"); got != 100 {
			return fmt.Errorf("acked counter = %v, want 100", got)
		}
		return nil
	})
}

func TestWindowLimitsInFlight(t *testing.T) {
	defer goleak.VerifyNone(t)
	const window = 4
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) {
		c.Window = window
		c.AckTimeout, c.BackoffMax = time.Hour, time.Hour
	})
	defer h.close()

	var acked, violations atomic.Int64
	var rec recorder
	rec.then = func(id string, n int) {
		// The outbox counts an ACK only after it has seen it, so at every
		// send, sends minus ACKs already given must stay within the window.
		if int64(n)-acked.Load() > window {
			violations.Add(1)
		}
	}
	l := h.attach("pi-1", true, rec.conn())
	h.publish(l, 1, 40)
	testutil.CheckFor(t, wait, 5*time.Millisecond, rec.wantSent(ids(1, window)))

	for i := 1; i <= 40; i++ {
		testutil.CheckFor(t, wait, time.Millisecond, func() error {
			if n := len(rec.sent()); n < i {
				return fmt.Errorf("sent %d, want at least %d", n, i)
			}
			return nil
		})
		acked.Add(1)
		l.Outbox().Acked("c1", fmt.Sprintf("m%d", i))
	}
	testutil.CheckFor(t, wait, 5*time.Millisecond, rec.wantSent(ids(1, 40)))
	if v := violations.Load(); v != 0 {
		t.Fatalf("%d sends exceeded the window of %d", v, window)
	}
}

func TestResendsWithBackoff(t *testing.T) {
	defer goleak.VerifyNone(t)
	const timeout = 40 * time.Millisecond
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) {
		c.AckTimeout, c.BackoffMax, c.MaxAttempts = timeout, 4*timeout, 0
	})
	defer h.close()

	var rec recorder
	l := h.attach("pi-1", true, rec.conn())
	h.publish(l, 1, 1)
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if n := len(rec.sent()); n < 5 {
			return fmt.Errorf("sent %d times, want 5", n)
		}
		return nil
	})
	rec.mu.Lock()
	times := slices.Clone(rec.times)
	rec.mu.Unlock()
	// Waits double from ack_timeout up to backoff_max: 1x 2x 4x 4x.
	for i, mult := range []time.Duration{1, 2, 4, 4} {
		if gap := times[i+1].Sub(times[i]); gap < mult*timeout {
			t.Errorf("send %d came %s after the previous one, want at least %s", i+2, gap, mult*timeout)
		}
	}
	if got := h.counter("redelivered"); got < 4 {
		t.Errorf("redelivered counter = %v, want at least 4", got)
	}
	l.Outbox().Acked("c1", "m1")
	h.waitDrained("pi-1")
}

// dlq waits until the link has n dead letters and returns them.
func (h *harness) dlq(id string, n int) []store.DeadLetter {
	h.t.Helper()
	var got []store.DeadLetter
	testutil.CheckFor(h.t, wait, 5*time.Millisecond, func() error {
		var err error
		if got, err = h.st.ListDLQ(id, 0); err != nil {
			return err
		}
		if len(got) != n {
			return fmt.Errorf("%d dead letters, want %d", len(got), n)
		}
		return nil
	})
	return got
}

func TestDeadLetterAfterMaxAttempts(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) {
		c.AckTimeout, c.BackoffMax, c.MaxAttempts = 20*time.Millisecond, 40*time.Millisecond, 3
	})
	defer h.close()

	var rec recorder
	l := h.attach("pi-1", true, rec.conn())
	h.publish(l, 1, 1)
	d := h.dlq("pi-1", 1)[0]
	if d.Reason != "no ACK after 3 attempts" || d.Attempts != 3 || string(d.Message) != string(frame(1)) {
		t.Fatalf("dead letter = %+v", d)
	}
	if got := rec.sent(); len(got) != 3 {
		t.Errorf("sent %v, want m1 three times", got)
	}
	if n := h.pending("pi-1"); n != 0 {
		t.Errorf("%d entries still pending", n)
	}
	// Counted by the writer just after the move it committed.
	testutil.CheckFor(t, wait, time.Millisecond, func() error {
		if got := h.counter("dead_lettered"); got != 1 {
			return fmt.Errorf("dead_lettered counter = %v, want 1", got)
		}
		return nil
	})
}

func TestDisconnectKeepsAttemptsAndResendsInOrder(t *testing.T) {
	defer goleak.VerifyNone(t)
	// One attempt only: any ack timeout spent would dead-letter at once.
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) {
		c.AckTimeout, c.BackoffMax, c.MaxAttempts = 2*time.Second, 2*time.Second, 1
	})
	defer h.close()

	var first recorder
	c1 := first.conn()
	l := h.attach("pi-1", true, c1)
	h.publish(l, 1, 3)
	testutil.CheckFor(t, wait, time.Millisecond, first.wantSent(ids(1, 3)))

	for range 5 {
		h.links.Detach(l, c1)
		var next recorder
		c1 = next.conn()
		h.attach("pi-1", true, c1)
		testutil.CheckFor(t, wait, time.Millisecond, next.wantSent(ids(1, 3)))
	}
	for i := 1; i <= 3; i++ {
		l.Outbox().Acked("c1", fmt.Sprintf("m%d", i))
	}
	h.waitDrained("pi-1")
	if got, _ := h.st.ListDLQ("pi-1", 0); len(got) != 0 {
		t.Fatalf("dead letters %+v, want none", got)
	}
}

func TestMemoryOverflowFallsBackToStoreInOrder(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) { c.MemoryQueue = 16 })
	defer h.close()

	rec := recorder{then: h.autoAck("pi-1")}
	l := h.attach("pi-1", true, rec.conn())
	const n = 5000
	for i := 1; i <= n; i += 100 {
		h.publish(l, i, i+99)
	}
	testutil.CheckFor(t, 30*time.Second, 10*time.Millisecond, rec.wantSent(ids(1, n)))
	h.waitDrained("pi-1")
}

func TestRefusals(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) {
		c.AckTimeout, c.BackoffMax, c.MaxAttempts = 30*time.Millisecond, 60*time.Millisecond, 1
	})
	defer h.close()

	var rec recorder
	rec.then = func(id string, n int) {
		ob := h.links.Get("pi-1").Outbox()
		switch {
		case id == "m1":
			ob.Refused(id, "invalid", "SA value must be an array")
		case id == "m2" && n == 2:
			ob.Refused(id, "rate_limited", "slow down")
		case id == "m2":
			ob.Acked("c1", id) // the retry, not counted as an attempt
		}
	}
	l := h.attach("pi-1", true, rec.conn())
	h.publish(l, 1, 2)
	d := h.dlq("pi-1", 1)[0]
	if d.Reason != "refused by pi-1: invalid: SA value must be an array" || d.Seq != 1 {
		t.Fatalf("dead letter = %+v", d)
	}
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if p := h.pending("pi-1"); p != 0 {
			return fmt.Errorf("%d entries still pending (sent %v)", p, rec.sent())
		}
		return nil
	})
	if got := rec.sent(); !slices.Equal(got, []string{"m1", "m2", "m2"}) {
		t.Fatalf("sent %v, want m1 m2 m2", got)
	}
	if got, _ := h.st.ListDLQ("pi-1", 0); len(got) != 1 {
		t.Fatalf("dead letters %+v, want m1 only", got)
	}
}

func TestNoAcksDeletesAfterSend(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) { c.Window = 2 })
	defer h.close()

	var rec recorder
	c := rec.conn()
	l, err := h.links.Ensure(link.Spec{ID: "pi-1", Acks: false})
	if err != nil {
		t.Fatal(err)
	}
	// A backlog of several store pages, waiting before the link connects.
	const n = 3*pageSize + 10
	h.publish(l, 1, n)
	h.attach("pi-1", false, c)
	testutil.CheckFor(t, wait, 5*time.Millisecond, rec.wantSent(ids(1, n)))
	h.waitDrained("pi-1")
}

func TestCloseStopsWritersBlockedOnSlowLinks(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, t.TempDir(), nil)

	var blocked sync.WaitGroup
	for i := range 20 {
		c := newFakeConn()
		var once sync.Once
		blocked.Add(1)
		c.sendData = func(ctx context.Context, _ []byte) error {
			once.Do(blocked.Done)
			<-ctx.Done() // a link that never reads
			return ctx.Err()
		}
		l := h.attach(fmt.Sprintf("slow-%d", i), true, c)
		h.publish(l, 1, 3)
	}
	// An ephemeral link that leaves has its writer stopped by the registry.
	var rec recorder
	eph, err := h.links.Attach(link.Spec{ID: link.NewEphemeralID(), Acks: true}, rec.conn())
	if err != nil {
		t.Fatal(err)
	}
	blocked.Wait()
	h.links.Detach(eph, eph.Conn())

	done := make(chan struct{})
	go func() {
		h.close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("Close did not return")
	}
}

func TestRestartDeliversStoredEntries(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := t.TempDir()

	// Before: the link is known and its outbox holds entries, but no sink
	// (no writer) exists.
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
	(&harness{t: t, st: st}).put(l, 1, 10)
	links.Close()
	st.Close()

	h := newHarness(t, dir, nil)
	defer h.close()
	rec := recorder{then: h.autoAck("pi-1")}
	l = h.attach("pi-1", true, rec.conn())
	testutil.CheckFor(t, wait, 5*time.Millisecond, rec.wantSent(ids(1, 10)))
	// New messages follow, numbered after the stored ones.
	h.publish(l, 11, 12)
	testutil.CheckFor(t, wait, 5*time.Millisecond, rec.wantSent(ids(1, 12)))
	h.waitDrained("pi-1")
}

// An entry committed after a later seq was already delivered (a DLQ replay
// racing the persist stage) is still delivered, in memory mode and behind.
func TestOutOfOrderCommitIsDelivered(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, memQueue := range []int{512, 0} {
		t.Run(fmt.Sprint("memory_queue=", memQueue), func(t *testing.T) {
			h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) { c.MemoryQueue = memQueue })
			defer h.close()
			rec := recorder{then: h.autoAck("pi-1")}
			l := h.attach("pi-1", true, rec.conn())
			h.publish(l, 1, 2)
			testutil.CheckFor(t, wait, time.Millisecond, rec.wantSent(ids(1, 2)))

			early, late := l.NextSeq(), l.NextSeq()
			h.commit(l, late, 4)
			testutil.CheckFor(t, wait, time.Millisecond, rec.wantSent([]string{"m1", "m2", "m4"}))
			h.commit(l, early, 3)
			testutil.CheckFor(t, wait, time.Millisecond, rec.wantSent([]string{"m1", "m2", "m4", "m3"}))
			testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
				if p := h.pending("pi-1"); p != 0 {
					return fmt.Errorf("%d entries still pending", p)
				}
				return nil
			})
		})
	}
}

// An ACK that was still inside the pipeline when its connection dropped
// completes the delivery: the entry is deleted, not sent again on the next
// connection (found with `slipstream sub -n 2`, which ACKs and leaves).
func TestLateAckAfterDisconnectCompletes(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) { c.AckTimeout = 5 * time.Second })
	defer h.close()

	var first recorder
	c1 := first.conn()
	l := h.attach("pi-1", true, c1)
	h.publish(l, 1, 3)
	testutil.CheckFor(t, wait, time.Millisecond, first.wantSent(ids(1, 3)))
	h.links.Detach(l, c1)
	time.Sleep(100 * time.Millisecond) // the writer ends the session first
	for i := 1; i <= 2; i++ {
		l.Outbox().Acked("c1", fmt.Sprintf("m%d", i))
	}
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if n := h.pending("pi-1"); n != 1 {
			return fmt.Errorf("%d entries pending, want 1 (m3)", n)
		}
		return nil
	})
	var next recorder
	h.attach("pi-1", true, next.conn())
	testutil.CheckFor(t, wait, time.Millisecond, next.wantSent(ids(3, 3)))
	time.Sleep(100 * time.Millisecond)
	if got := next.sent(); len(got) != 1 {
		t.Fatalf("sent again %v, want only m3", got)
	}
	l.Outbox().Acked("c1", "m3")
	l.Outbox().Acked("c1", "m1") // a duplicate ACK changes nothing
	h.waitDrained("pi-1")
}

// The sink hands the writer each message's header (the envelope's decoded
// message): the writer matches ACKs with it and does not decode the frame
// again. An entry read back from the store has its header decoded from the
// frame. Completed entries leave the store in one batch shortly after.
func TestNotifiedHeaderIsUsed(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, t.TempDir(), nil)
	defer h.close()

	// A new writer reads its outbox from the store first; once it has
	// caught up, notified entries come from memory.
	var reads atomic.Int32
	h.sink.afterRead = func(string) { reads.Add(1) }
	var rec recorder
	l := h.attach("pi-1", true, rec.conn())
	testutil.CheckFor(t, wait, time.Millisecond, func() error {
		if reads.Load() == 0 {
			return errors.New("no read yet")
		}
		return nil
	})
	seqs := h.put(l, 1, 3)
	var batch []*pipeline.Envelope
	for i, seq := range seqs {
		// The header says "h<i>" where the frame says "m<i>": the writer
		// must go by the header.
		msg := &slipstream.Message{Type: slipstream.TypeSK, MessageID: fmt.Sprintf("h%d", i+1), ClusterGroupID: "c1"}
		batch = append(batch, &pipeline.Envelope{Status: pipeline.Accepted, Msg: msg, Encoded: frame(i + 1),
			Recipients: []string{l.ID()}, Seqs: []uint64{seq}})
	}
	if err := h.sink.Deliver(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, wait, 5*time.Millisecond, rec.wantSent(ids(1, 3)))
	ob := l.Outbox()
	ob.Acked("c1", "m1") // the frame's id: not what the writer knows this entry by
	for i := 1; i <= 3; i++ {
		ob.Acked("c1", fmt.Sprintf("h%d", i))
	}
	h.waitDrained("pi-1")
	if got := h.counter("acked"); got != 3 {
		t.Errorf("acked counter = %v, want 3", got)
	}
}

// While the writer reads its outbox from the store, notifications keep
// coming: Notify keeps them in memory again, and after a read that reached
// the end the writer goes on from memory, without sending anything twice
// or leaving anything out, whether memory overflowed meanwhile or not.
func TestCatchUpWhileNotified(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, mq := range []int{16, 512} {
		t.Run(fmt.Sprintf("memory_queue=%d", mq), func(t *testing.T) {
			h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) { c.MemoryQueue = mq; c.Window = 64 })
			defer h.close()

			var acks sync.WaitGroup
			rec := recorder{then: func(id string, n int) {
				acks.Add(1)
				time.AfterFunc(time.Duration(n%3)*time.Millisecond, func() {
					defer acks.Done()
					h.links.Get("pi-1").Outbox().Acked("c1", id)
				})
			}}
			l := h.attach("pi-1", true, rec.conn())
			const n = 4000
			for i := 1; i <= n; i += 20 {
				h.publish(l, i, i+19)
				if i%400 == 1 {
					time.Sleep(time.Millisecond)
				}
			}
			testutil.CheckFor(t, 30*time.Second, 10*time.Millisecond, rec.wantSent(ids(1, n)))
			testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
				if p := h.pending("pi-1"); p != 0 {
					return fmt.Errorf("%d entries still pending", p)
				}
				return nil
			})
			acks.Wait()
		})
	}
}

// The same, step by step: notifications that arrive while the writer reads
// the store, for entries the read returned (dropped from memory) and for
// later ones (sent from memory); more of them than memory holds (the writer
// reads again); and one committed out of order (the writer goes back).
func TestCatchUpAfterRead(t *testing.T) {
	defer goleak.VerifyNone(t)
	const window, mq = 8, 16
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) { c.MemoryQueue = mq; c.Window = window })
	defer h.close()

	// deliver notifies the sink of entries already committed, as fanout does.
	deliver := func(l *link.Link, seqs []uint64, first int) {
		var batch []*pipeline.Envelope
		for i, seq := range seqs {
			batch = append(batch, &pipeline.Envelope{Status: pipeline.Accepted, Encoded: frame(first + i),
				Recipients: []string{l.ID()}, Seqs: []uint64{seq}})
		}
		_ = h.sink.Deliver(context.Background(), batch)
	}
	during, reads := h.hookReads()
	// The receiver ACKs at once when auto is set, else it holds the ACKs.
	var (
		auto atomic.Bool
		mu   sync.Mutex
		held []string
	)
	rec := recorder{then: func(id string, _ int) {
		if auto.Load() {
			h.links.Get("pi-1").Outbox().Acked("c1", id)
			return
		}
		mu.Lock()
		held = append(held, id)
		mu.Unlock()
	}}
	l := h.attach("pi-1", true, rec.conn())
	testutil.CheckFor(t, wait, time.Millisecond, func() error { // the first read: nothing stored
		if reads.Load() == 0 {
			return errors.New("no read yet")
		}
		return nil
	})
	auto.Store(true)
	var want []string
	// behind queues action for the writer's next read, then notifies the
	// stored entries seqs[:60] (messages first...) while holding the ACKs:
	// more than the window, the ready queue and memory can hold, so the
	// writer falls behind (it was not: the action runs during this step's
	// first read), and lets the ACKs go.
	behind := func(seqs []uint64, first int, action func()) {
		t.Helper()
		during <- action
		auto.Store(false)
		deliver(l, seqs[:60], first)
		testutil.CheckFor(t, wait, time.Millisecond, rec.wantSent(append(want, ids(first, first+window-1)...)))
		auto.Store(true)
		mu.Lock()
		for _, id := range held {
			h.links.Get("pi-1").Outbox().Acked("c1", id)
		}
		held = nil
		mu.Unlock()
	}

	// 1..100 stored, 1..60 notified. While the writer reads, 61..70 (which
	// the read returned) and 101..105 (committed after it) are notified.
	seqs := h.put(l, 1, 100)
	ran := make(chan struct{})
	behind(seqs, 1, func() {
		deliver(l, seqs[60:70], 61)
		deliver(l, h.put(l, 101, 105), 101)
		close(ran)
	})
	want = ids(1, 105)
	testutil.CheckFor(t, wait, 5*time.Millisecond, rec.wantSent(want))
	<-ran
	h.publish(l, 106, 110) // from memory
	want = ids(1, 110)
	testutil.CheckFor(t, wait, 5*time.Millisecond, rec.wantSent(want))

	// While the writer reads, 201..230 are stored and notified: more than
	// memory holds, the writer reads them from the store.
	behind(h.put(l, 111, 200), 111, func() { deliver(l, h.put(l, 201, 230), 201) })
	want = ids(1, 230)
	testutil.CheckFor(t, wait, 5*time.Millisecond, rec.wantSent(want))

	// Out of order (as a DLQ replay racing persist): seq s is taken before
	// 291..300 but committed only while the writer reads up to 300 (after
	// a new connection: a new session reads the store from the start), and
	// notified before them. It is below the writer's cursor and was not
	// read: the writer goes back to the store for it.
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error { // nothing pending: the new session re-sends nothing
		if p := h.pending("pi-1"); p != 0 {
			return fmt.Errorf("%d entries still pending", p)
		}
		return nil
	})
	h.put(l, 231, 290)
	s := l.NextSeq()
	later := h.put(l, 291, 300)
	during <- func() {
		if err := h.st.DB().Update(func(txn *badger.Txn) error { return txn.Set(store.OutboxKey(l.ID(), s), frame(999)) }); err != nil {
			panic(err)
		}
		deliver(l, []uint64{s}, 999)
		deliver(l, later, 291)
	}
	h.attach("pi-1", true, rec.conn())
	want = append(ids(1, 300), "m999")
	testutil.CheckFor(t, wait, 5*time.Millisecond, rec.wantSent(want))
	h.waitDrained("pi-1")
}

// Notifications that reach the writer only after it read their entries
// from the store, sent them and had them acknowledged: the first of them
// makes the writer go back to the store (it is below the cursor and not
// held: it might have been committed out of order), and a second one
// arriving during that read must not be sent again from memory, although
// the read, from below it, did not return it (it is gone: completed). It
// was sent twice (a CI run of TestOutOfOrderCommitIsDelivered on a busy
// machine: sent m1 m2 m2 m4).
func TestLateNotifyOfCompletedEntryIsNotResent(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) { c.MemoryQueue = 512 })
	defer h.close()
	during, reads := h.hookReads()
	notify := func(l *link.Link, seq uint64, i int) {
		_ = h.sink.Deliver(context.Background(), []*pipeline.Envelope{{Status: pipeline.Accepted, Encoded: frame(i),
			Recipients: []string{l.ID()}, Seqs: []uint64{seq}}})
	}
	rec := recorder{then: h.autoAck("pi-1")}
	c1 := rec.conn()
	l := h.attach("pi-1", true, c1)
	testutil.CheckFor(t, wait, time.Millisecond, func() error { // the first read: nothing stored
		if reads.Load() == 0 {
			return errors.New("no read yet")
		}
		return nil
	})
	// m1 and m2 are committed, then read, sent and ACKed before their
	// Notify: a new connection makes the writer read the store again.
	seqs := h.put(l, 1, 2)
	var next recorder
	next.then = h.autoAck("pi-1")
	h.links.Detach(l, c1)
	l = h.attach("pi-1", true, next.conn())
	testutil.CheckFor(t, wait, time.Millisecond, next.wantSent(ids(1, 2)))
	h.waitDrained("pi-1")
	// Now their notifications: m1's makes the writer read the store from
	// seq 1; m2's comes during that read.
	done := make(chan struct{})
	during <- func() { notify(l, seqs[1], 2); close(done) }
	notify(l, seqs[0], 1)
	<-done
	h.publish(l, 3, 3) // a later message, from memory: the writer is past the late ones
	testutil.CheckFor(t, wait, time.Millisecond, next.wantSent(ids(1, 3)))
	time.Sleep(50 * time.Millisecond)
	if got := next.sent(); !slices.Equal(got, ids(1, 3)) {
		t.Fatalf("sent %v, want %v (nothing twice)", got, ids(1, 3))
	}
	h.waitDrained("pi-1")
}

// doneSet keeps the latest doneCap seqs added, and nothing after reset.
func TestDoneSetIsBounded(t *testing.T) {
	var d doneSet
	n := doneCap + 44
	for i := 1; i <= n; i++ {
		d.add(uint64(i))
	}
	for i := 1; i <= n; i++ {
		if want := i > n-doneCap; d.has(uint64(i)) != want {
			t.Fatalf("has(%d) = %v, want %v", i, !want, want)
		}
	}
	if len(d.set) != doneCap || len(d.ring) != doneCap {
		t.Fatalf("%d seqs kept (ring %d), want %d", len(d.set), len(d.ring), doneCap)
	}
	d.reset()
	if d.has(uint64(n)) || d.set != nil {
		t.Fatal("reset kept seqs")
	}
}

// parked reports whether o's writer goroutine is parked.
func parked(o *Outbox) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.started && !o.running
}

// A writer parks when it has nothing to do (an idle connection holds no
// writer goroutine) and comes back for each delivery, ACK and
// disconnection; a durable link's writer parks only with an empty outbox
// (TestRescanHandlesAnEntryThatCameBack: the sink still wakes it for its
// periodic pass); Close of a parked writer returns, and nothing leaks.
func TestIdleWriterParks(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) { c.parkAfter = 20 * time.Millisecond })
	defer h.close()

	rec := recorder{then: h.autoAck("con-1")}
	c := rec.conn()
	l, err := h.links.Attach(link.Spec{ID: "con-1", Acks: true}, c)
	if err != nil {
		t.Fatal(err)
	}
	o := l.Outbox().(*Outbox)
	waitParked := func(o *Outbox, what string) {
		t.Helper()
		testutil.CheckFor(t, wait, time.Millisecond, func() error {
			if !parked(o) {
				return fmt.Errorf("%s: the writer of %s is not parked", what, o.id)
			}
			return nil
		})
	}
	waitParked(o, "connected, idle")
	for round := range 3 {
		first := 1 + round*10
		h.publish(l, first, first+9)
		testutil.CheckFor(t, wait, time.Millisecond, rec.wantSent(ids(1, first+9)))
		h.waitDrained("con-1")
		waitParked(o, fmt.Sprintf("after round %d", round))
	}

	// A durable link's writer parks once its outbox is empty, and stays
	// while it holds entries.
	drec := recorder{then: h.autoAck("pi-1")}
	dc := drec.conn()
	d := h.attach("pi-1", true, dc)
	do := d.Outbox().(*Outbox)
	h.publish(d, 1, 5)
	testutil.CheckFor(t, wait, time.Millisecond, drec.wantSent(ids(1, 5)))
	h.waitDrained("pi-1")
	waitParked(do, "drained")
	h.links.Detach(d, dc)
	h.publish(d, 6, 8) // kept for its next connection
	time.Sleep(50 * time.Millisecond)
	if parked(do) {
		t.Fatal("the writer of durable pi-1 parked with 3 entries in its outbox")
	}
	drec2 := recorder{then: h.autoAck("pi-1")}
	h.attach("pi-1", true, drec2.conn())
	testutil.CheckFor(t, wait, time.Millisecond, drec2.wantSent(ids(6, 8)))
	h.waitDrained("pi-1")
	waitParked(do, "drained again")

	// A parked writer learns of the disconnection: the session ends.
	h.links.Detach(l, c)
	testutil.CheckFor(t, wait, time.Millisecond, func() error {
		if h.links.Get("con-1") != nil {
			return fmt.Errorf("con-1 is still known")
		}
		return nil
	})
	select {
	case <-o.exited:
	case <-time.After(wait):
		t.Fatal("the outbox of con-1 did not finish after its link left")
	}

	// Close of a parked writer (another ephemeral link) at shutdown.
	rec2 := recorder{}
	l2, err := h.links.Attach(link.Spec{ID: "con-2", Acks: true}, rec2.conn())
	if err != nil {
		t.Fatal(err)
	}
	waitParked(l2.Outbox().(*Outbox), "connected, idle")
}
