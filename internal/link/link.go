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
// # Peer links and duplicate connections
//
// Two instances that both dial each other open two connections for one
// link. Attach keeps one of them, chosen the same way on both sides: the
// connection dialled by the instance whose id sorts lower (bytewise) wins.
// Who dialled a connection comes from the optional Direction interface of
// its Conn (a Conn without it counts as dialled by the remote). When a peer
// link already has a live connection and a new one attaches:
//
//   - both were dialled by the same instance (a reconnection whose old
//     connection is not yet known dead): the newest wins, as for clients;
//   - the new one was dialled by the lower id: it wins, and the old one is
//     closed with code 1000 and reason DuplicateReason;
//   - the old one was dialled by the lower id: the new one is refused with
//     ErrDuplicate, and the caller closes it with 1000 and DuplicateReason.
//
// Client links keep the simple rule: the newest connection wins and the old
// one is closed with 1008 "replaced by a newer connection".
//
// # Configured links
//
// A link declared with Spec.Configured (a peer block of the websocket_client
// source) keeps its configured tags, acks and command permission, and stays
// a peer, when a connection attaches with a spec that is not Configured (an
// inbound connection that names the same id in its HELLO): this instance's
// configuration, not the remote's claim, decides routing and permissions.
//
// Lock order: Registry.obMu, then Registry.mu, then Link.mu; none of them is
// held while calling into an Outbox or a Conn, except obMu around the
// outbox factory, and Link.mu around Conn.Done and Direction.Dialed (which
// must not block or lock) when Attach applies the tie-break.
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

// Direction is an optional interface of a Conn: it tells which side opened
// the connection, for the tie-break between duplicate peer connections (see
// the package doc). A Conn that does not implement it counts as dialled by
// the remote.
type Direction interface {
	// Dialed reports whether this instance dialled the connection (true) or
	// accepted it (false). It must not block or lock.
	Dialed() bool
}

// DuplicateReason is the close reason of a peer connection that lost the
// tie-break (close code 1000).
const DuplicateReason = "duplicate peer connection"

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
	// Perms restricts what the link may send (nil: nothing restricted
	// beyond Commands). Like Commands, not recorded in the store.
	Perms *Permissions
	// Configured marks a link that this instance's configuration declares
	// (a websocket_client peer): its tags, acks and Commands win over those
	// of later specs that are not Configured, and it stays a peer. Not
	// recorded in the store: the configuration declares it at every start.
	Configured bool
	// Declared marks a link the configuration names without deciding its
	// tags (a websocket_server inbound_peer): like a Configured one, it
	// cannot be forgotten (Registry.Forget) while the configuration names
	// it. Not recorded in the store.
	Declared bool
}

// Link is one remote party. Its methods are safe for concurrent use.
type Link struct {
	id      string
	peer    bool
	durable bool

	mu         sync.Mutex
	configured bool
	declared   bool // Configured or Declared
	tags       []string
	acks       bool
	commands   bool
	perms      *Permissions
	conn       Conn
	outbox     Outbox

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

// Configured reports whether this instance's configuration declares the
// link (Spec.Configured).
func (l *Link) Configured() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.configured
}

// Declared reports whether this instance's configuration names the link
// (Spec.Configured or Spec.Declared): Registry.Forget refuses it.
func (l *Link) Declared() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.declared
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

// Permissions returns what the link may send (Spec.Perms of its latest
// Attach; nil: not restricted).
func (l *Link) Permissions() *Permissions {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.perms
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
