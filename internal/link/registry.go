package link

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"

	badger "github.com/dgraph-io/badger/v4"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/store"
)

// Errors of Attach and AttachWith.
var (
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("link registry: closed")
	// ErrDuplicate is returned when a new connection of a peer link loses
	// the tie-break against the link's live connection (see the package
	// doc). Nothing was changed; the caller closes the new connection with
	// code 1000 and DuplicateReason.
	ErrDuplicate = errors.New("link registry: " + DuplicateReason)
	// ErrForgetting is returned while Forget removes the link: the new
	// connection is refused (its remote dials again).
	ErrForgetting = errors.New("link registry: the link is being forgotten")
)

// Errors of Forget.
var (
	ErrUnknownLink = errors.New("no such link")
	ErrDeclared    = errors.New("the configuration declares this link (a websocket_client peer block or a websocket_server inbound_peer): remove it there and restart, then forget it")
	ErrConnected   = errors.New("the link is connected: forget it once its connection is gone (close the client, or stop the peer)")
)

// Registry holds every link of an instance.
type Registry struct {
	st   *store.Store
	self string
	log  *slog.Logger

	obMu      sync.Mutex // serialises outbox creation (see ensureOutbox)
	mu        sync.RWMutex
	links     map[string]*Link
	newOutbox func(*Link) Outbox
	closed    bool
	// forgetting holds the ids Forget is removing: attach refuses them.
	forgetting map[string]bool

	requests *Requests
}

// NewRegistry loads the known links of st. Outbox entries of links that are
// no longer known (an ephemeral link that vanished in a crash) are dropped.
func NewRegistry(st *store.Store, self string, log *slog.Logger) (*Registry, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Registry{st: st, self: self, log: log, links: map[string]*Link{}, requests: newRequests()}
	recs, err := st.Links()
	if err != nil {
		return nil, fmt.Errorf("load links: %w", err)
	}
	for _, rec := range recs {
		l := &Link{id: rec.ID, peer: rec.Peer, durable: true, tags: rec.Tags, acks: rec.Acks}
		last, err := st.LastOutboxSeq(rec.ID)
		if err != nil {
			return nil, fmt.Errorf("load outbox of %q: %w", rec.ID, err)
		}
		l.seq.Store(last)
		r.links[rec.ID] = l
	}
	if err := r.dropOrphans(); err != nil {
		return nil, err
	}
	return r, nil
}

// dropOrphans removes outbox entries of links that are not known.
func (r *Registry) dropOrphans() error {
	var orphans []string
	err := r.st.DB().View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = []byte("o/")
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); {
			id, _, ok := store.SplitSeqKey(it.Item().Key())
			if !ok {
				it.Next()
				continue
			}
			if _, known := r.links[id]; !known {
				orphans = append(orphans, id)
			}
			// Skip to the next link's prefix.
			it.Seek(append(store.OutboxPrefix(id), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("scan outboxes: %w", err)
	}
	for _, id := range orphans {
		r.log.Info("dropping the outbox of a link that is gone", "link", id)
		if _, err := r.st.DropOutbox(id); err != nil {
			return err
		}
	}
	return nil
}

// Self is the instance's own id.
func (r *Registry) Self() string { return r.self }

// SetOutboxFactory installs the websocket sink's writer maker and gives every
// existing link its outbox. Called once, at build time.
func (r *Registry) SetOutboxFactory(f func(*Link) Outbox) {
	r.mu.Lock()
	r.newOutbox = f
	links := make([]*Link, 0, len(r.links))
	for _, l := range r.links {
		links = append(links, l)
	}
	r.mu.Unlock()
	for _, l := range links {
		r.ensureOutbox(l)
	}
}

// ensureOutbox gives l its outbox if it has none yet. The factory runs with
// no link lock held (it may call l's methods); obMu makes creation once.
func (r *Registry) ensureOutbox(l *Link) Outbox {
	r.obMu.Lock()
	defer r.obMu.Unlock()
	if ob := l.Outbox(); ob != nil {
		return ob
	}
	r.mu.RLock()
	f := r.newOutbox
	r.mu.RUnlock()
	if f == nil {
		return nil
	}
	ob := f(l)
	l.mu.Lock()
	l.outbox = ob
	l.mu.Unlock()
	return ob
}

// NewEphemeralID returns a fresh "con-<random>" id.
func NewEphemeralID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "con-" + hex.EncodeToString(b[:])
}

// Ensure declares a durable link without a connection (a configured peer),
// creating or updating its record.
func (r *Registry) Ensure(s Spec) (*Link, error) {
	s.Durable = true
	return r.attach(s, nil, nil)
}

// Attach makes c the live connection of the link described by s, creating
// the link if needed. A previous live connection of that link is closed
// (code 1008, "replaced by a newer connection"), except on peer links, where
// the tie-break of the package doc decides: the old connection is closed
// with 1000 and DuplicateReason, or c is refused with ErrDuplicate. Durable
// links are recorded in the store before Attach returns.
func (r *Registry) Attach(s Spec, c Conn) (*Link, error) { return r.attach(s, c, nil) }

// AttachWith is Attach with a hook that runs once the link is registered
// (it is a recipient from then on) and before its outbox starts sending on c.
// A source answers HELLO there: the client learns it is attached only when it
// is, and the answer precedes every pending delivery. The hook does not run
// when Attach fails (ErrDuplicate included).
func (r *Registry) AttachWith(s Spec, c Conn, beforeSending func()) (*Link, error) {
	return r.attach(s, c, beforeSending)
}

func (r *Registry) attach(s Spec, c Conn, beforeSending func()) (*Link, error) {
	if s.ID == "" || s.ID == r.self {
		return nil, fmt.Errorf("link id %q is empty or is this instance's own id", s.ID)
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, ErrClosed
	}
	if r.forgetting[s.ID] {
		r.mu.Unlock()
		return nil, ErrForgetting
	}
	l, ok := r.links[s.ID]
	created := !ok
	if !ok {
		l = &Link{id: s.ID, peer: s.Peer, durable: s.Durable}
		if s.Durable {
			last, err := r.st.LastOutboxSeq(s.ID)
			if err != nil {
				r.mu.Unlock()
				return nil, err
			}
			l.seq.Store(last)
		}
		r.links[s.ID] = l
	}
	r.mu.Unlock()

	l.mu.Lock()
	if s.Configured || s.Declared {
		l.declared = true
	}
	if s.Configured {
		l.configured = true
	} else if l.configured {
		// The configuration decides, not the remote's HELLO.
		s.Tags, s.Acks, s.Commands, s.Perms, s.Peer = l.tags, l.acks, l.commands, l.perms, true
	}
	prev := l.conn
	if prev != nil && isDone(prev) {
		prev = nil // closed, its Detach is on its way
	}
	replaceCode, replaceReason := 1008, "replaced by a newer connection"
	if c != nil && prev != nil && prev != c && s.Peer {
		if keep := r.keeps(s.ID, prev, c); keep == prev {
			l.mu.Unlock()
			return nil, ErrDuplicate
		} else if keep == c {
			replaceCode, replaceReason = 1000, DuplicateReason
		}
	}
	changed := created || !slices.Equal(l.tags, s.Tags) || l.acks != s.Acks || (s.Durable && !l.durable) || l.peer != s.Peer
	l.tags = slices.Clone(s.Tags)
	l.acks = s.Acks
	l.peer = s.Peer
	l.commands = s.Commands
	l.perms = s.Perms
	if s.Durable {
		l.durable = true
	}
	prev = l.conn
	if c != nil {
		l.conn = c
	}
	durable := l.durable
	l.mu.Unlock()
	ob := r.ensureOutbox(l)

	if durable && changed {
		if err := r.st.SaveLink(store.LinkRecord{ID: l.id, Tags: s.Tags, Peer: s.Peer, Acks: s.Acks}); err != nil {
			return nil, fmt.Errorf("record link %q: %w", l.id, err)
		}
	}
	if c != nil && prev != nil && prev != c {
		if ob != nil {
			ob.Disconnected(prev)
		}
		prev.Close(replaceCode, replaceReason)
	}
	if beforeSending != nil {
		beforeSending()
	}
	if c != nil && ob != nil {
		ob.Connected(c)
	}
	return l, nil
}

// keeps applies the tie-break between two live connections of peer link
// id: it returns the one dialled by the instance whose id sorts lower, or
// nil when the same instance dialled both (then the newest wins).
func (r *Registry) keeps(id string, old, next Conn) Conn {
	oldBy, nextBy := r.dialledBy(id, old), r.dialledBy(id, next)
	switch {
	case oldBy == nextBy:
		return nil
	case oldBy < nextBy:
		return old
	default:
		return next
	}
}

// dialledBy names the instance that opened c, a connection of link id.
func (r *Registry) dialledBy(id string, c Conn) string {
	if d, ok := c.(Direction); ok && d.Dialed() {
		return r.self
	}
	return id
}

// isDone reports whether c is closed.
func isDone(c Conn) bool {
	select {
	case <-c.Done():
		return true
	default:
		return false
	}
}

// Detach ends c's role as l's live connection (no-op if c was already
// replaced). An ephemeral link is then removed with its pending deliveries.
func (r *Registry) Detach(l *Link, c Conn) {
	l.mu.Lock()
	if l.conn != c {
		l.mu.Unlock()
		return
	}
	l.conn = nil
	ob := l.outbox
	durable := l.durable
	l.mu.Unlock()
	if ob != nil {
		ob.Disconnected(c)
	}
	if durable {
		return
	}
	r.mu.Lock()
	if r.links[l.id] == l {
		delete(r.links, l.id)
	}
	r.mu.Unlock()
	if ob != nil {
		ob.Close()
	}
	if _, err := r.st.DropOutbox(l.id); err != nil {
		r.log.Warn("dropping an ephemeral link's outbox", "link", l.id, "err", err)
	}
}

// Forget removes a durable link that is gone for good (a client id that
// will not come back, a decommissioned peer): it stops being a recipient,
// its record and its pending deliveries are deleted, and the number of
// deliveries dropped is returned. Its dead letters stay (purge them apart).
// A link the configuration declares, or one that is connected, is refused
// (ErrDeclared, ErrConnected); an unknown id is ErrUnknownLink. A delivery
// that a persist in flight commits for the link meanwhile is dropped at the
// next start, with the outboxes of other unknown links.
func (r *Registry) Forget(id string) (int, error) {
	r.mu.Lock()
	l := r.links[id]
	if l == nil || r.forgetting[id] {
		r.mu.Unlock()
		return 0, ErrUnknownLink
	}
	l.mu.Lock()
	declared, connected := l.declared, l.conn != nil && !isDone(l.conn)
	ob := l.outbox
	l.mu.Unlock()
	switch {
	case declared:
		r.mu.Unlock()
		return 0, ErrDeclared
	case connected:
		r.mu.Unlock()
		return 0, ErrConnected
	}
	delete(r.links, id)
	if r.forgetting == nil {
		r.forgetting = map[string]bool{}
	}
	r.forgetting[id] = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.forgetting, id)
		r.mu.Unlock()
	}()

	if ob != nil {
		ob.Close()
	}
	n, err := r.st.DropOutbox(id)
	if err != nil {
		return 0, err
	}
	if err := r.st.DeleteLink(id); err != nil {
		return 0, err
	}
	r.log.Info("link forgotten", "link", id, "dropped_deliveries", n)
	return n, nil
}

// Get returns a link by id.
func (r *Registry) Get(id string) *Link {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.links[id]
}

// All returns every link, sorted by id.
func (r *Registry) All() []*Link {
	r.mu.RLock()
	out := make([]*Link, 0, len(r.links))
	for _, l := range r.links {
		out = append(out, l)
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// Requests is the instance's table of requests awaiting replies.
func (r *Registry) Requests() *Requests { return r.requests }

// Recipients chooses the links a data message goes to (PROTOCOL.md "Routing,
// step by step", step 5): every link except the one it came from (fromID),
// except any whose id is the message's origin or is already in its path, and,
// when targetedTags is non-empty, only links with at least one matching tag.
// dst is reused.
func (r *Registry) Recipients(dst []*Link, fromID string, m *slipstream.Message) []*Link {
	return r.recipients(dst, fromID, m, false)
}

// PeerRecipients is Recipients restricted to peer links (other instances):
// the recipients of requests and of slipstream.* commands, which only
// instances answer.
func (r *Registry) PeerRecipients(dst []*Link, fromID string, m *slipstream.Message) []*Link {
	return r.recipients(dst, fromID, m, true)
}

func (r *Registry) recipients(dst []*Link, fromID string, m *slipstream.Message, peersOnly bool) []*Link {
	dst = dst[:0]
	r.mu.RLock()
	defer r.mu.RUnlock()
	for id, l := range r.links {
		if id == fromID || id == m.OriginInstanceID || m.InPath(id) || (peersOnly && !l.IsPeer()) {
			continue
		}
		if len(m.TargetedTags) > 0 && !slipstream.HasAnyTag(l.Tags(), m.TargetedTags) {
			continue
		}
		dst = append(dst, l)
	}
	return dst
}

// Close stops every outbox and closes every live connection with 1001
// ("going away"). Later Attach calls fail.
func (r *Registry) Close() {
	r.mu.Lock()
	r.closed = true
	links := make([]*Link, 0, len(r.links))
	for _, l := range r.links {
		links = append(links, l)
	}
	r.mu.Unlock()
	for _, l := range links {
		l.mu.Lock()
		c, ob := l.conn, l.outbox
		l.conn = nil
		l.mu.Unlock()
		if ob != nil {
			ob.Close()
		}
		if c != nil {
			c.Close(1001, "instance shutting down")
		}
	}
}
