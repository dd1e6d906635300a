package link

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	badger "github.com/dgraph-io/badger/v4"
	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/store"
)

// fakeConn is a link.Conn that records how it was closed.
type fakeConn struct {
	dialed bool

	mu     sync.Mutex
	code   int
	reason string
	done   chan struct{}
	once   sync.Once
}

func newFake(dialed bool) *fakeConn { return &fakeConn{dialed: dialed, done: make(chan struct{})} }

func (f *fakeConn) SendControl([]byte) bool                { return true }
func (f *fakeConn) SendData(context.Context, []byte) error { return nil }
func (f *fakeConn) Done() <-chan struct{}                  { return f.done }
func (f *fakeConn) RemoteAddr() string                     { return "fake" }
func (f *fakeConn) Dialed() bool                           { return f.dialed }
func (f *fakeConn) closed() (int, string)                  { f.mu.Lock(); defer f.mu.Unlock(); return f.code, f.reason }
func (f *fakeConn) isOpen() bool                           { return !isDone(f) }
func (f *fakeConn) Close(code int, reason string) {
	f.once.Do(func() {
		f.mu.Lock()
		f.code, f.reason = code, reason
		f.mu.Unlock()
		close(f.done)
	})
}

func newTestRegistry(t *testing.T, self string) *Registry {
	t.Helper()
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRegistry(st, self, nil)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Close()
		st.Close()
	})
	return r
}

// The tie-break keeps the connection dialled by the lower id, whichever
// arrives first, on both sides.
func TestDuplicatePeerConnections(t *testing.T) {
	peer := Spec{ID: "b-1", Peer: true, Acks: true, Durable: true}
	tests := []struct {
		name        string
		self        string
		firstDialed bool // the first connection was dialled by self
		nextDialed  bool
		wantNext    bool // the second connection wins
	}{
		{"lower self keeps its own dial", "a-1", true, false, false},
		{"lower self replaces an inbound one with its own dial", "a-1", false, true, true},
		{"higher self keeps the inbound one", "c-1", false, true, false},
		{"higher self replaces its own dial with the inbound one", "c-1", true, false, true},
		{"same dialler: newest wins", "a-1", true, true, true},
		{"same remote dialler: newest wins", "a-1", false, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRegistry(t, tt.self)
			first, next := newFake(tt.firstDialed), newFake(tt.nextDialed)
			if _, err := r.Attach(peer, first); err != nil {
				t.Fatal(err)
			}
			hooked := false
			l, err := r.AttachWith(peer, next, func() { hooked = true })
			if !tt.wantNext {
				if !errors.Is(err, ErrDuplicate) || l != nil || hooked {
					t.Fatalf("AttachWith = %v, %v (hook ran: %v); want ErrDuplicate", l, err, hooked)
				}
				if r.Get("b-1").Conn() != first || !first.isOpen() {
					t.Fatal("the winning connection was replaced or closed")
				}
				return
			}
			if err != nil || !hooked {
				t.Fatalf("AttachWith = %v (hook ran: %v)", err, hooked)
			}
			if r.Get("b-1").Conn() != next {
				t.Fatal("the new connection is not the live one")
			}
			code, reason := first.closed()
			wantCode, wantReason := 1000, DuplicateReason
			if tt.firstDialed == tt.nextDialed {
				wantCode, wantReason = 1008, "replaced by a newer connection"
			}
			if code != wantCode || reason != wantReason {
				t.Fatalf("old connection closed with %d %q, want %d %q", code, reason, wantCode, wantReason)
			}
		})
	}
}

// A connection that is closed already never wins the tie-break.
func TestDuplicateAgainstClosedConnection(t *testing.T) {
	r := newTestRegistry(t, "a-1")
	peer := Spec{ID: "b-1", Peer: true, Durable: true}
	old := newFake(true)
	if _, err := r.Attach(peer, old); err != nil {
		t.Fatal(err)
	}
	old.Close(1001, "gone")
	next := newFake(false)
	if _, err := r.Attach(peer, next); err != nil {
		t.Fatalf("Attach after the old connection closed: %v", err)
	}
	if r.Get("b-1").Conn() != next {
		t.Fatal("the new connection is not the live one")
	}
}

// Client links: the newest connection always wins.
func TestClientLinkNewestWins(t *testing.T) {
	r := newTestRegistry(t, "z-1")
	spec := Spec{ID: "pi-1", Durable: true}
	old, next := newFake(false), newFake(false)
	if _, err := r.Attach(spec, old); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Attach(spec, next); err != nil {
		t.Fatal(err)
	}
	if code, _ := old.closed(); code != 1008 || r.Get("pi-1").Conn() != next {
		t.Fatalf("old closed with %d; live is the new one: %v", code, r.Get("pi-1").Conn() == next)
	}
}

// A configured peer keeps its configured tags, acks and permissions when an
// inbound connection attaches with the remote's own claims.
func TestConfiguredLinkKeepsItsSpec(t *testing.T) {
	r := newTestRegistry(t, "a-1")
	if _, err := r.Ensure(Spec{ID: "b-1", Tags: []string{"gcp"}, Peer: true, Acks: true, Commands: true, Configured: true}); err != nil {
		t.Fatal(err)
	}
	c := newFake(false)
	l, err := r.Attach(Spec{ID: "b-1", Tags: []string{"other"}, Acks: false, Durable: true}, c)
	if err != nil {
		t.Fatal(err)
	}
	if !l.Configured() || !l.IsPeer() || !l.Acks() || !l.AllowCommands() || !slices.Equal(l.Tags(), []string{"gcp"}) || l.Conn() != c {
		t.Fatalf("link b-1: configured=%v peer=%v acks=%v commands=%v tags=%v", l.Configured(), l.IsPeer(), l.Acks(), l.AllowCommands(), l.Tags())
	}
	// An unconfigured link takes what the connection says.
	l, err = r.Attach(Spec{ID: "c-1", Tags: []string{"x"}, Peer: true, Durable: true}, newFake(false))
	if err != nil || l.Configured() || !slices.Equal(l.Tags(), []string{"x"}) {
		t.Fatalf("link c-1: %v configured=%v tags=%v", err, l.Configured(), l.Tags())
	}
}

// Forget removes a durable link that is gone: record, outbox and the
// link itself, keeping its dead letters; declared and connected links are
// refused, and a new registry on the same store does not know it.
func TestForget(t *testing.T) {
	r := newTestRegistry(t, "a-1")
	if _, err := r.Forget("nobody"); !errors.Is(err, ErrUnknownLink) {
		t.Fatalf("Forget of an unknown link: %v", err)
	}
	if _, err := r.Ensure(Spec{ID: "peer-1", Peer: true, Acks: true, Configured: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Ensure(Spec{ID: "inbound-1", Peer: true, Acks: true, Declared: true}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"peer-1", "inbound-1"} {
		if _, err := r.Forget(id); !errors.Is(err, ErrDeclared) {
			t.Fatalf("Forget of declared %s: %v, want ErrDeclared", id, err)
		}
	}
	c := newFake(false)
	l, err := r.Attach(Spec{ID: "pi-1", Tags: []string{"x"}, Acks: true, Durable: true}, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Forget("pi-1"); !errors.Is(err, ErrConnected) {
		t.Fatalf("Forget of a connected link: %v, want ErrConnected", err)
	}
	st := r.st
	if err := st.DB().Update(func(txn *badger.Txn) error {
		for seq := uint64(1); seq <= 3; seq++ {
			if err := txn.Set(store.OutboxKey("pi-1", seq), []byte(`{"type":"SK"}`)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := st.MoveToDLQ("pi-1", 3, []byte(`{"type":"SK"}`), "test", 1); err != nil {
		t.Fatal(err)
	}
	r.Detach(l, c)

	n, err := r.Forget("pi-1")
	if err != nil || n != 2 {
		t.Fatalf("Forget = %d, %v; want the 2 pending deliveries dropped", n, err)
	}
	if r.Get("pi-1") != nil {
		t.Fatal("the forgotten link is still known")
	}
	m := &slipstream.Message{Type: slipstream.TypeSK, MessageID: "m", OriginInstanceID: "a-1", MessagePath: []string{"a-1"}}
	for _, got := range r.Recipients(nil, "", m) {
		if got.ID() == "pi-1" {
			t.Fatal("the forgotten link is still a recipient")
		}
	}
	if left, err := st.CountOutbox("pi-1"); err != nil || left != 0 {
		t.Fatalf("outbox after Forget: %d (%v)", left, err)
	}
	if dl, err := st.ListDLQ("pi-1", 10); err != nil || len(dl) != 1 {
		t.Fatalf("dead letters after Forget: %d (%v), want the 1 kept", len(dl), err)
	}
	if _, err := r.Forget("pi-1"); !errors.Is(err, ErrUnknownLink) {
		t.Fatalf("second Forget: %v", err)
	}
	r2, err := NewRegistry(st, "a-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Get("pi-1") != nil {
		t.Fatal("a new registry on the store knows the forgotten link")
	}
	// Back again: a fresh link whose seqs continue above its dead letters.
	l2, err := r2.Ensure(Spec{ID: "pi-1", Acks: true})
	if err != nil {
		t.Fatal(err)
	}
	if seq := l2.NextSeq(); seq != 4 {
		t.Fatalf("the returning link's first seq is %d, want 4 (above its dead letter 3)", seq)
	}
}
