package link

import (
	"errors"
	"sync"
	"time"
)

// Requests remembers, for a while, which link each request (GK, GA, GW) and
// each command (CMD) came in on, so that replies (inReplyTo) travel back hop
// by hop (PROTOCOL.md "Requests and replies"). It is never stored: after a
// restart, replies to earlier requests are dropped, and the requester's own
// timeout ends its wait.
//
// Every entry lives for the same TTL, so expiry is a FIFO: entries are
// appended in arrival order and dropped from the front once expired.
type Requests struct {
	mu      sync.Mutex
	ttl     time.Duration
	max     int
	maxLink int // per link that sent them; 0: no limit
	now     func() time.Time
	entries map[string]requestEntry
	perLink map[string]int
	order   []requestRef // FIFO of (id, expiry), possibly holding stale refs
	head    int
}

type requestEntry struct {
	from    string
	expires time.Time
}

type requestRef struct {
	id      string
	expires time.Time
}

// Request table defaults (the tag_filter stage's request_timeout and
// max_requests).
const (
	DefaultRequestTTL         = 30 * time.Second
	DefaultMaxRequests        = 100_000
	DefaultMaxRequestsPerLink = 1000
)

// ErrKnownRequest is returned by Remember for an id already remembered.
var ErrKnownRequest = errors.New("request id already in use")

// ErrTooManyRequests is returned by Remember when the table is full.
var ErrTooManyRequests = errors.New("too many requests awaiting replies")

// ErrTooManyLinkRequests is returned by Remember when the link that sent
// the request has its maximum of requests awaiting replies.
var ErrTooManyLinkRequests = errors.New("this link has too many requests awaiting replies")

func newRequests() *Requests {
	return &Requests{ttl: DefaultRequestTTL, max: DefaultMaxRequests, maxLink: DefaultMaxRequestsPerLink, now: time.Now,
		entries: map[string]requestEntry{}, perLink: map[string]int{}}
}

// Configure sets how long ids are remembered, how many at most, and how
// many per link that sent them; values <= 0 keep the current setting.
func (q *Requests) Configure(ttl time.Duration, max, perLink int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if ttl > 0 {
		q.ttl = ttl
	}
	if max > 0 {
		q.max = max
	}
	if perLink > 0 {
		q.maxLink = perLink
	}
}

// TTL is how long an id is remembered.
func (q *Requests) TTL() time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.ttl
}

// Remember records that request id came from link from. It returns
// ErrKnownRequest when id is already remembered (a copy that came another way
// round the mesh, or a reused id), ErrTooManyRequests when the table is full.
func (q *Requests) Remember(id, from string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.now()
	q.expire(now)
	if _, ok := q.entries[id]; ok {
		return ErrKnownRequest
	}
	if len(q.entries) >= q.max {
		return ErrTooManyRequests
	}
	if q.maxLink > 0 && q.perLink[from] >= q.maxLink {
		return ErrTooManyLinkRequests
	}
	exp := now.Add(q.ttl)
	q.entries[id] = requestEntry{from: from, expires: exp}
	q.perLink[from]++
	q.order = append(q.order, requestRef{id: id, expires: exp})
	return nil
}

// Lookup returns the link request id came from, if it is still remembered.
func (q *Requests) Lookup(id string) (from string, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e, ok := q.entries[id]
	if !ok || !q.now().Before(e.expires) {
		return "", false
	}
	return e.from, true
}

// Len is the number of remembered ids (expired ones included until the next
// Remember drops them).
func (q *Requests) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.entries)
}

// expire drops the entries whose time is up, from the front of the FIFO.
func (q *Requests) expire(now time.Time) {
	for q.head < len(q.order) && !now.Before(q.order[q.head].expires) {
		r := q.order[q.head]
		if e, ok := q.entries[r.id]; ok && e.expires.Equal(r.expires) {
			delete(q.entries, r.id)
			if q.perLink[e.from]--; q.perLink[e.from] <= 0 {
				delete(q.perLink, e.from)
			}
		}
		q.order[q.head] = requestRef{}
		q.head++
	}
	if q.head > 1024 && q.head*2 > len(q.order) { // compact the consumed front
		q.order = append(q.order[:0], q.order[q.head:]...)
		q.head = 0
	}
}
