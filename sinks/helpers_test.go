package sinks

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/testutil"
	"github.com/slipstream-sync/slipstream/pipeline"
)

const self = "self-1"

// harness is a websocket sink built through its kind on a real Badger store.
// Close it with defer (before goleak's check runs).
type harness struct {
	t     *testing.T
	st    *store.Store
	links *link.Registry
	sink  *WebSocket
	reg   *prometheus.Registry
}

func newHarness(t *testing.T, dir string, mut func(*WebSocketConfig)) *harness {
	t.Helper()
	st, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	links, err := link.NewRegistry(st, self, log)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	kind, ok := pipeline.Lookup(pipeline.ClassSink, "websocket")
	if !ok {
		t.Fatal("websocket sink kind not registered")
	}
	cfg := kind.NewConfig().(*WebSocketConfig)
	if mut != nil {
		mut(cfg)
	}
	reg := prometheus.NewRegistry()
	part, err := kind.Build(cfg, &pipeline.BuildContext{
		Instance: pipeline.Instance{ID: self, ClusterGroup: "c1"},
		Name:     "links",
		Store:    st,
		Links:    links,
		Logger:   log,
		Metrics:  reg,
		Tracer:   noop.NewTracerProvider().Tracer("test"),
	})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	h := &harness{t: t, st: st, links: links, sink: part.(*WebSocket), reg: reg}
	if err := h.sink.Start(context.Background()); err != nil {
		h.close()
		t.Fatal(err)
	}
	return h
}

func (h *harness) close() {
	h.sink.Close()
	h.links.Close()
	h.st.Close()
}

// attach connects c as the live connection of a durable client link.
func (h *harness) attach(id string, acks bool, c link.Conn) *link.Link {
	h.t.Helper()
	l, err := h.links.Attach(link.Spec{ID: id, Acks: acks, Durable: true}, c)
	if err != nil {
		h.t.Fatal(err)
	}
	return l
}

// frame is a data message as persist would store it.
func frame(i int) []byte {
	return fmt.Appendf(nil, `{"type":"SK","messageId":"m%d","clusterGroupId":"c1","key":"k","value":%d}`, i, i)
}

// put commits outbox entries for messages first..last of l, as persist does.
func (h *harness) put(l *link.Link, first, last int) []uint64 {
	h.t.Helper()
	var seqs []uint64
	err := h.st.DB().Update(func(txn *badger.Txn) error {
		for i := first; i <= last; i++ {
			seq := l.NextSeq()
			seqs = append(seqs, seq)
			if err := txn.Set(store.OutboxKey(l.ID(), seq), frame(i)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return seqs
}

// publish stores messages first..last for l and hands them to the sink the
// way the fanout stage does, one envelope each.
func (h *harness) publish(l *link.Link, first, last int) {
	h.t.Helper()
	seqs := h.put(l, first, last)
	batch := make([]*pipeline.Envelope, 0, len(seqs))
	for i, seq := range seqs {
		batch = append(batch, &pipeline.Envelope{Status: pipeline.Accepted, Encoded: frame(first + i),
			Recipients: []string{l.ID()}, Seqs: []uint64{seq}})
	}
	if err := h.sink.Deliver(context.Background(), batch); err != nil {
		h.t.Fatal(err)
	}
}

// commit stores message i under seq for l and notifies the sink.
func (h *harness) commit(l *link.Link, seq uint64, i int) {
	h.t.Helper()
	err := h.st.DB().Update(func(txn *badger.Txn) error { return txn.Set(store.OutboxKey(l.ID(), seq), frame(i)) })
	if err != nil {
		h.t.Fatal(err)
	}
	env := &pipeline.Envelope{Status: pipeline.Accepted, Encoded: frame(i), Recipients: []string{l.ID()}, Seqs: []uint64{seq}}
	if err := h.sink.Deliver(context.Background(), []*pipeline.Envelope{env}); err != nil {
		h.t.Fatal(err)
	}
}

// waitDrained waits until link id's outbox is empty, failing the test after
// wait.
func (h *harness) waitDrained(id string) {
	h.t.Helper()
	testutil.CheckFor(h.t, wait, time.Millisecond, func() error {
		if n := h.pending(id); n != 0 {
			return fmt.Errorf("%d entries still pending for %s", n, id)
		}
		return nil
	})
}

func (h *harness) pending(id string) int {
	h.t.Helper()
	n, err := h.st.CountOutbox(id)
	if err != nil {
		h.t.Fatal(err)
	}
	return n
}

func (h *harness) counter(outcome string) float64 {
	var m dto.Metric
	if err := h.sink.m.deliveries.WithLabelValues("client", outcome).Write(&m); err != nil {
		h.t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// autoAck returns a recorder hook that acknowledges every frame sent to link
// id, as a well-behaved receiver does.
func (h *harness) autoAck(id string) func(string, int) {
	return func(msgID string, _ int) { h.links.Get(id).Outbox().Acked("c1", msgID) }
}

// fakeConn is a link.Conn made of function fields.
type fakeConn struct {
	sendData    func(ctx context.Context, frame []byte) error
	sendControl func(frame []byte) bool
	onClose     func(code int, reason string)

	once sync.Once
	done chan struct{}
}

func newFakeConn() *fakeConn { return &fakeConn{done: make(chan struct{})} }

func (c *fakeConn) SendControl(f []byte) bool {
	if c.sendControl == nil {
		return true
	}
	return c.sendControl(f)
}

func (c *fakeConn) SendData(ctx context.Context, f []byte) error {
	select {
	case <-c.done:
		return context.Canceled
	default:
	}
	return c.sendData(ctx, f)
}

func (c *fakeConn) Close(code int, reason string) {
	c.once.Do(func() {
		close(c.done)
		if c.onClose != nil {
			c.onClose(code, reason)
		}
	})
}

func (c *fakeConn) Done() <-chan struct{} { return c.done }
func (c *fakeConn) RemoteAddr() string    { return "fake" }

// recorder records the frames a fakeConn is sent, with when.
type recorder struct {
	mu    sync.Mutex
	ids   []string
	times []time.Time
	// then is called (outside the lock) after each frame is recorded, with
	// the frame's messageId and the number of frames so far. Set it before
	// the conn is attached.
	then func(id string, n int)
}

func (r *recorder) conn() *fakeConn {
	c := newFakeConn()
	c.sendData = func(_ context.Context, f []byte) error {
		var m struct {
			MessageID string `json:"messageId"`
		}
		if err := json.Unmarshal(f, &m); err != nil {
			return err
		}
		r.mu.Lock()
		r.ids = append(r.ids, m.MessageID)
		r.times = append(r.times, time.Now())
		n := len(r.ids)
		then := r.then
		r.mu.Unlock()
		if then != nil {
			then(m.MessageID, n)
		}
		return nil
	}
	return c
}

func (r *recorder) sent() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ids)
}

// ids returns "m<first>".."m<last>".
func ids(first, last int) []string {
	var out []string
	for i := first; i <= last; i++ {
		out = append(out, fmt.Sprintf("m%d", i))
	}
	return out
}

// wantSent checks that exactly want was sent, in order.
func (r *recorder) wantSent(want []string) func() error {
	return func() error {
		got := r.sent()
		if !slices.Equal(got, want) {
			if len(got) > 12 {
				return fmt.Errorf("sent %d frames, want %d (first %v)", len(got), len(want), got[:12])
			}
			return fmt.Errorf("sent %v, want %v", got, want)
		}
		return nil
	}
}

// hookReads counts the writers' reads of the store, and runs an action sent
// on during on the writer's goroutine right after its next read.
func (h *harness) hookReads() (during chan func(), reads *atomic.Int32) {
	during, reads = make(chan func(), 1), new(atomic.Int32)
	h.sink.afterRead = func(string) {
		reads.Add(1)
		select {
		case f := <-during:
			f()
		default:
		}
	}
	return during, reads
}
