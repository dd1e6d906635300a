// Package link is the one place that knows which links exist.
//
// A link is one remote party (another instance, or a client) with a stable id,
// tags and at most one live connection. Sources attach connections to links;
// the websocket sink gives each link an Outbox (its durable, ordered writer);
// stages ask the registry for recipients and answer senders through Reply.
//
// Durable links (peers, and clients that named themselves by HELLO or the
// query string) are recorded in the store: they stay recipients while offline
// and across restarts, and their deliveries wait in their outboxes. Ephemeral
// links (generated "con-..." ids) exist only while connected; their pending
// deliveries are dropped when they disconnect.
//
// Lock order: Registry.obMu, then Registry.mu, then Link.mu; none of them is
// held while calling into an Outbox or a Conn, except obMu around the
// outbox factory.
package link

import (
	"context"
	"sync"
	"sync/atomic"

	slipstream "github.com/slipstream-sync/slipstream"
)

// Conn is one live WebSocket connection of a link, implemented by sources.
type Conn interface {
	// SendControl queues a control frame (ACK, ERR, HELLO, a reply). It never
	// blocks; it returns false when the connection is closed or its control
	// queue is full (the connection is then closed as a slow consumer).
	SendControl(frame []byte) bool
	// SendData queues a data frame, blocking while the connection's write
	// queue is full, until ctx is done or the connection closes.
	SendData(ctx context.Context, frame []byte) error
	// Close closes the connection with a WebSocket close code.
	Close(code int, reason string)
	// Done is closed once the connection is closed.
	Done() <-chan struct{}
	// RemoteAddr is the remote network address.
	RemoteAddr() string
}

// Outbox is a link's durable, ordered writer, implemented by the websocket
// sink. Every method is called without registry or link locks held and must
// not block for long.
type Outbox interface {
	// Notify tells the writer that entry seq (holding frame) is committed to
	// the link's outbox in the store. Called by the sink, in seq order.
	Notify(seq uint64, frame []byte)
	// Acked is called when the link acknowledges (cluster, id).
	Acked(cluster, id string)
	// Refused is called when the link answers a delivered message with ERR.
	Refused(id, code, reason string)
	// Connected is called when c becomes the link's live connection.
	Connected(c Conn)
	// Disconnected is called when c stops being the link's live connection.
	Disconnected(c Conn)
	// Close stops the writer; pending entries stay in the store.
	Close()
}

// Spec describes the link a connection belongs to.
type Spec struct {
	ID      string
	Tags    []string
	Peer    bool
	Acks    bool
	Durable bool
	// Commands allows the link to issue slipstream.* commands (the
	// listener's or peer's allow_commands); not recorded in the store.
	Commands bool
}

// Link is one remote party. Its methods are safe for concurrent use.
type Link struct {
	id      string
	peer    bool
	durable bool

	mu       sync.Mutex
	tags     []string
	acks     bool
	commands bool
	conn     Conn
	outbox   Outbox

	seq atomic.Uint64 // last allocated outbox seq
}

// ID is the link's stable id.
func (l *Link) ID() string { return l.id }

// IsPeer reports whether the link is another instance.
func (l *Link) IsPeer() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.peer
}

// Durable reports whether the link's deliveries survive its disconnection.
func (l *Link) Durable() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.durable
}

// Tags returns the link's tags (do not modify).
func (l *Link) Tags() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tags
}

// Acks reports whether the link acknowledges deliveries (false: fire and
// forget).
func (l *Link) Acks() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acks
}

// AllowCommands reports whether the link may issue slipstream.* commands
// (Spec.Commands of its latest Attach).
func (l *Link) AllowCommands() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.commands
}

// Conn returns the live connection, or nil when the link is down.
func (l *Link) Conn() Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conn
}

// Connected reports whether the link has a live connection.
func (l *Link) Connected() bool { return l.Conn() != nil }

// Outbox returns the link's writer (nil when no websocket sink is built).
func (l *Link) Outbox() Outbox {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.outbox
}

// NextSeq allocates the link's next outbox sequence number. Only the persist
// stage allocates (from one goroutine); gaps left by failed batches are fine.
func (l *Link) NextSeq() uint64 { return l.seq.Add(1) }

// LastSeq is the last allocated sequence number.
func (l *Link) LastSeq() uint64 { return l.seq.Load() }

// SetLastSeq raises the last allocated seq to at least n (used at load time
// and by DLQ replay, which allocates through NextSeq afterwards).
func (l *Link) SetLastSeq(n uint64) {
	for {
		cur := l.seq.Load()
		if cur >= n || l.seq.CompareAndSwap(cur, n) {
			return
		}
	}
}

// Reply encodes m and queues it on the live connection; it is dropped when
// the link is down (the sender retransmits data, and requests time out).
func (l *Link) Reply(m *slipstream.Message) {
	c := l.Conn()
	if c == nil {
		return
	}
	c.SendControl(slipstream.Encode(m))
}

// SendControl queues an already encoded control frame; false when the link
// is down or the queue is full.
func (l *Link) SendControl(frame []byte) bool {
	c := l.Conn()
	if c == nil {
		return false
	}
	return c.SendControl(frame)
}
