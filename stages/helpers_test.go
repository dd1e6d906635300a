package stages

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// This file holds what the stage tests share: a harness that builds stages
// the way the daemon does (registry lookup, HCL snippet, Build with a real
// BuildContext over Badger in a temp dir), envelope makers, and fakes.

const (
	selfID  = "self-1"
	cluster = "cg"
)

// harness is one instance's worth of shared parts: a real store, a real link
// registry and the BuildContext stages are built with.
type harness struct {
	tb    testing.TB
	store *store.Store
	links *link.Registry
	bc    *pipeline.BuildContext
}

// newHarness opens a store in a temp dir and a link registry over it; both
// are closed when the test ends.
func newHarness(tb testing.TB) *harness {
	tb.Helper()
	st, err := store.Open(tb.TempDir(), store.Options{})
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	tb.Cleanup(func() {
		if err := st.Close(); err != nil {
			tb.Errorf("close store: %v", err)
		}
	})
	discard := slog.New(slog.DiscardHandler)
	links, err := link.NewRegistry(st, selfID, discard)
	if err != nil {
		tb.Fatalf("link registry: %v", err)
	}
	tb.Cleanup(links.Close)
	return &harness{
		tb:    tb,
		store: st,
		links: links,
		bc: &pipeline.BuildContext{
			Instance:     pipeline.Instance{ID: selfID, ClusterGroup: cluster, Tags: []string{"local"}},
			Pipeline:     "main",
			Store:        st,
			Links:        links,
			Logger:       discard,
			Metrics:      prometheus.NewRegistry(),
			StageConfigs: map[string]any{},
		},
	}
}

var stageLabel = regexp.MustCompile(`^\s*stage\s+"([a-z_]+)"`)

// stage builds the stage that the HCL snippet src describes
// (`stage "dedup" { window = "1h" }`), as the daemon would: the decoded
// config is recorded in StageConfigs for the stages built after it.
func (h *harness) stage(src string) pipeline.Stage {
	h.tb.Helper()
	kind, cfg := h.config(src)
	h.bc.Name = kind.Name
	part, err := kind.Build(cfg, h.bc)
	if err != nil {
		h.tb.Fatalf("build %s: %v", kind.Name, err)
	}
	st, ok := part.(pipeline.Stage)
	if !ok {
		h.tb.Fatalf("kind %q built a %T, not a pipeline.Stage", kind.Name, part)
	}
	h.bc.StageConfigs[kind.Name] = cfg
	return st
}

// config decodes src into its kind's config and fails the test on any
// diagnostic.
func (h *harness) config(src string) (*pipeline.Kind, any) {
	h.tb.Helper()
	return lookupStage(h.tb, src), stageConfig(h.tb, src)
}

// stageConfig decodes a snippet into its kind's config, failing the test on
// any diagnostic.
func stageConfig(tb testing.TB, src string) any {
	tb.Helper()
	cfg, diags := pipeline.DecodeKindBlock(lookupStage(tb, src), "test.hcl", []byte(src))
	if len(diags) > 0 {
		tb.Fatalf("decode %q:\n%s", src, pipeline.FormatDiagnostics(diags))
	}
	return cfg
}

// configDiags decodes src and returns its diagnostics as the CLI prints
// them ("" when there are none).
func configDiags(tb testing.TB, src string) string {
	tb.Helper()
	_, diags := pipeline.DecodeKindBlock(lookupStage(tb, src), "test.hcl", []byte(src))
	return pipeline.FormatDiagnostics(diags)
}

func lookupStage(tb testing.TB, src string) *pipeline.Kind {
	tb.Helper()
	m := stageLabel.FindStringSubmatch(src)
	if m == nil {
		tb.Fatalf("snippet does not start with stage \"KIND\": %q", src)
	}
	kind, ok := pipeline.Lookup(pipeline.ClassStage, m[1])
	if !ok {
		tb.Fatalf("stage kind %q is not registered", m[1])
	}
	return kind
}

// attach makes a connected link with a fake connection.
func (h *harness) attach(s link.Spec) *fakeConn {
	h.tb.Helper()
	c := newFakeConn()
	if _, err := h.links.Attach(s, c); err != nil {
		h.tb.Fatalf("attach %s: %v", s.ID, err)
	}
	return c
}

// ensure declares a durable link that is offline (a configured peer that is
// not connected).
func (h *harness) ensure(s link.Spec) {
	h.tb.Helper()
	if _, err := h.links.Ensure(s); err != nil {
		h.tb.Fatalf("ensure %s: %v", s.ID, err)
	}
}

// outbox returns every pending entry of a link's outbox, in seq order.
func (h *harness) outbox(linkID string) []store.OutboxEntry {
	h.tb.Helper()
	es, err := h.store.ReadOutbox(linkID, 0, 1<<30)
	if err != nil {
		h.tb.Fatalf("read outbox of %s: %v", linkID, err)
	}
	return es
}

// marker reports whether the dedup marker of (cluster, id) is stored, and
// when it expires (0: never).
func (h *harness) marker(clusterID, id string) (found bool, expiresAt time.Time) {
	h.tb.Helper()
	err := h.store.DB().View(func(txn *badger.Txn) error {
		it, err := txn.Get(store.DedupKey(clusterID, id))
		if err != nil {
			return err
		}
		found = true
		if ts := it.ExpiresAt(); ts != 0 {
			expiresAt = time.Unix(int64(ts), 0)
		}
		return nil
	})
	if err != nil && !errors.Is(err, badger.ErrKeyNotFound) {
		h.tb.Fatalf("read marker: %v", err)
	}
	return found, expiresAt
}

// putMarker stores a dedup marker as persist does, with ttl (0: none).
func (h *harness) putMarker(clusterID, id string, ttl time.Duration) {
	h.tb.Helper()
	err := h.store.DB().Update(func(txn *badger.Txn) error {
		e := badger.NewEntry(store.DedupKey(clusterID, id), nil)
		if ttl > 0 {
			e = e.WithTTL(ttl)
		}
		return txn.SetEntry(e)
	})
	if err != nil {
		h.tb.Fatalf("put marker: %v", err)
	}
}

// putExpiredMarker stores a marker whose TTL has already run out.
func (h *harness) putExpiredMarker(clusterID, id string) {
	h.tb.Helper()
	err := h.store.DB().Update(func(txn *badger.Txn) error {
		e := badger.NewEntry(store.DedupKey(clusterID, id), nil)
		e.ExpiresAt = uint64(time.Now().Add(-time.Minute).Unix())
		return txn.SetEntry(e)
	})
	if err != nil {
		h.tb.Fatalf("put marker: %v", err)
	}
}

// keys lists every stored key under prefix (as strings, in key order).
func (h *harness) keys(prefix string) []string {
	h.tb.Helper()
	var out []string
	err := h.store.DB().View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = []byte(prefix)
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			out = append(out, string(it.Item().KeyCopy(nil)))
		}
		return nil
	})
	if err != nil {
		h.tb.Fatalf("list keys: %v", err)
	}
	return out
}

// process runs one batch through st and fails the test on an error.
func process(tb testing.TB, st pipeline.Stage, batch ...*pipeline.Envelope) []*pipeline.Envelope {
	tb.Helper()
	out, err := st.Process(context.Background(), batch)
	if err != nil {
		tb.Fatalf("Process: %v", err)
	}
	return out
}

// frame returns an Envelope holding an undecoded frame, as a source emits it.
func frame(from pipeline.Origin, raw string) *pipeline.Envelope {
	return &pipeline.Envelope{Raw: []byte(raw), From: from, Received: time.Now()}
}

// decoded returns an Envelope whose frame has already been through decode:
// raw must be a valid message with every field decode would fill.
func decoded(tb testing.TB, from pipeline.Origin, raw string) *pipeline.Envelope {
	tb.Helper()
	m, err := slipstream.Decode([]byte(raw), nil)
	if err == nil {
		err = m.Validate(nil)
	}
	if err != nil {
		tb.Fatalf("test message %s: %v", raw, err)
	}
	return &pipeline.Envelope{Raw: []byte(raw), Msg: m, From: from, Received: time.Now()}
}

// withStatus sets e's status and returns e.
func withStatus(e *pipeline.Envelope, s pipeline.Status) *pipeline.Envelope {
	e.Status = s
	return e
}

// sk is an SK message with every entry field set, as decode leaves it.
func sk(id, clusterID string, path ...string) string {
	return fmt.Sprintf(`{"type":"SK","messageId":%q,"originInstanceId":"pi-1","clusterGroupId":%q,%s"timestamp":1700000000000,"key":"order:1","value":{"status":"paid"}}`,
		id, clusterID, pathJSON(path))
}

func pathJSON(path []string) string {
	if path == nil {
		return ""
	}
	s := `"messagePath":[`
	for i, p := range path {
		if i > 0 {
			s += ","
		}
		s += fmt.Sprintf("%q", p)
	}
	return s + "],"
}

// statuses lists the statuses of envelopes, for one-line comparisons.
func statuses(es []*pipeline.Envelope) []pipeline.Status {
	out := make([]pipeline.Status, len(es))
	for i, e := range es {
		out[i] = e.Status
	}
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return s
}

// fakeOrigin is the link an envelope arrived on. It records every Reply
// unless ReplyFunc is set, which then receives them instead.
type fakeOrigin struct {
	id        string
	tags      []string
	peer      bool
	commands  bool
	perms     *link.Permissions
	ReplyFunc func(*slipstream.Message)

	mu      sync.Mutex
	replies []*slipstream.Message
}

var _ pipeline.Origin = (*fakeOrigin)(nil)

func client(id string) *fakeOrigin { return &fakeOrigin{id: id, tags: []string{"local"}} }
func peer(id string) *fakeOrigin   { return &fakeOrigin{id: id, peer: true} }

func (o *fakeOrigin) ID() string                     { return o.id }
func (o *fakeOrigin) Tags() []string                 { return o.tags }
func (o *fakeOrigin) IsPeer() bool                   { return o.peer }
func (o *fakeOrigin) AllowCommands() bool            { return o.commands }
func (o *fakeOrigin) Permissions() *link.Permissions { return o.perms }
func (o *fakeOrigin) Reply(m *slipstream.Message) {
	if o.ReplyFunc != nil {
		o.ReplyFunc(m)
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.replies = append(o.replies, m)
}

// Replies returns the recorded replies.
func (o *fakeOrigin) Replies() []*slipstream.Message {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.replies)
}

// fakeConn is a link.Conn that records the frames queued on it. Function
// fields, when set, decide the results instead.
type fakeConn struct {
	SendControlFunc func(frame []byte) bool
	SendDataFunc    func(ctx context.Context, frame []byte) error

	mu      sync.Mutex
	control [][]byte
	data    [][]byte
	closed  bool
	done    chan struct{}
}

var _ link.Conn = (*fakeConn)(nil)

func newFakeConn() *fakeConn { return &fakeConn{done: make(chan struct{})} }

func (c *fakeConn) SendControl(frame []byte) bool {
	if c.SendControlFunc != nil {
		return c.SendControlFunc(frame)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.control = append(c.control, slices.Clone(frame))
	return !c.closed
}

// frames returns the control frames queued so far, as strings.
func (c *fakeConn) frames() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.control))
	for i, f := range c.control {
		out[i] = string(f)
	}
	return out
}

func (c *fakeConn) SendData(ctx context.Context, frame []byte) error {
	if c.SendDataFunc != nil {
		return c.SendDataFunc(ctx, frame)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.data = append(c.data, slices.Clone(frame))
	return nil
}

func (c *fakeConn) Close(int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		close(c.done)
	}
}

func (c *fakeConn) Done() <-chan struct{} { return c.done }
func (c *fakeConn) RemoteAddr() string    { return "192.0.2.1:4000" }

// fakeOutbox is a link.Outbox that records the feedback the ack stage hands
// it, as "acked CLUSTER/ID" and "refused ID CODE: REASON".
type fakeOutbox struct {
	AckedFunc   func(cluster, id string)
	RefusedFunc func(id, code, reason string)

	mu    sync.Mutex
	calls []string
}

var _ link.Outbox = (*fakeOutbox)(nil)

func (o *fakeOutbox) record(s string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, s)
}

// Calls returns the recorded feedback.
func (o *fakeOutbox) Calls() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.calls)
}

func (o *fakeOutbox) Notify(uint64, []byte) {}
func (o *fakeOutbox) Acked(clusterID, id string) {
	if o.AckedFunc != nil {
		o.AckedFunc(clusterID, id)
	}
	o.record("acked " + clusterID + "/" + id)
}
func (o *fakeOutbox) Refused(id, code, reason string) {
	if o.RefusedFunc != nil {
		o.RefusedFunc(id, code, reason)
	}
	o.record("refused " + id + " " + code + ": " + reason)
}
func (o *fakeOutbox) Connected(link.Conn)    {}
func (o *fakeOutbox) Disconnected(link.Conn) {}
func (o *fakeOutbox) Close()                 {}

// fakeSink is a pipeline.Sink that records the batches it gets; DeliverFunc,
// when set, decides the result.
type fakeSink struct {
	DeliverFunc func(ctx context.Context, batch []*pipeline.Envelope) error

	batches [][]*pipeline.Envelope
}

var _ pipeline.Sink = (*fakeSink)(nil)

func (s *fakeSink) Deliver(ctx context.Context, batch []*pipeline.Envelope) error {
	s.batches = append(s.batches, slices.Clone(batch))
	if s.DeliverFunc != nil {
		return s.DeliverFunc(ctx, batch)
	}
	return nil
}
