package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
)

// SessionOptions configure a Session.
type SessionOptions struct {
	// Options are those of every connection the session opens. Give an ID:
	// the instance keeps a durable link's deliveries while it is away and
	// sends them again when the session reconnects with the same ID. Without
	// one, deliveries routed to the session while it is disconnected are
	// dropped by the instance.
	Options
	// MinBackoff and MaxBackoff bound the wait before redialling: it starts
	// at MinBackoff and doubles up to MaxBackoff, each wait drawn at random
	// below the bound (full jitter) so that many sessions do not redial
	// together. Defaults: 100ms and 10s.
	MinBackoff, MaxBackoff time.Duration
	// OnConnect is called with the instance's HELLO (nil without an ID) each
	// time a connection is up (the first time from Connect, then from the
	// session's goroutine); it must not block.
	OnConnect func(hello *slipstream.Message)
	// OnDisconnect is called with the reason each time a connection ends or
	// a dial fails (from Connect while it retries, then from the session's
	// goroutine); it must not block.
	OnDisconnect func(err error)
}

// Session keeps an application connected to its instance: it redials with
// backoff when the connection breaks, announcing the same ID so that the
// instance resumes durable delivery where it stopped (what was delivered
// but not acknowledged is sent again). Publish and the typed calls (SetKey,
// Get, Command...) wait for a connection and retry on a new one when the
// connection fails under them, with the same messageId, so a message is
// published once in effect (the instance deduplicates by messageId).
// Subscribe hands deliveries to a handler and acknowledges each one after
// the handler returns nil.
//
// A Session is safe for concurrent use.
type Session struct {
	calls // Get, GetArray, GetWeighted, Command, SetKey, SetArray, SetWeighted, DeleteKey

	url   string
	o     SessionOptions
	owner string // this process's name in dedup claims

	mu      sync.Mutex
	cur     *Client       // nil while disconnected
	changed chan struct{} // closed and replaced when cur changes
	lastErr error         // why the last connection or dial failed

	closing     chan struct{}
	closeOnce   sync.Once
	done        chan struct{} // the session's goroutine ended
	subscribing atomic.Bool

	connects, handled, failed, duplicates, busy atomic.Uint64
}

// SessionStats count what a session did since Connect.
type SessionStats struct {
	Connects   uint64 // connections opened (1 + reconnections)
	Handled    uint64 // deliveries whose handler returned nil
	Failed     uint64 // deliveries whose handler (or dedup store) failed: left for redelivery
	Duplicates uint64 // deliveries a DedupStore knew as handled: acknowledged without the handler
	Busy       uint64 // deliveries that waited while another receiver handled them
}

// ErrSubscribed is returned by Subscribe while another Subscribe runs on the
// same session.
var ErrSubscribed = errors.New("slipstream client: the session already has a subscriber")

const (
	defaultMinBackoff = 100 * time.Millisecond
	defaultMaxBackoff = 10 * time.Second
	defaultLease      = 30 * time.Second
	defaultWindow     = 24 * time.Hour
	storeTimeout      = 5 * time.Second // dedup-store calls made after the handler
)

// Connect dials url and returns a Session once the first connection is up.
// It retries failed dials with backoff until ctx is done, except for
// refusals that a retry cannot mend: the instance answering the handshake
// with 401, 403 or 404, or refusing the HELLO with ERR. After that, the
// session redials on its own until Close, whatever the reason.
func Connect(ctx context.Context, url string, o SessionOptions) (*Session, error) {
	if o.MinBackoff <= 0 {
		o.MinBackoff = defaultMinBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(defaultMaxBackoff, o.MinBackoff)
	}
	s := &Session{
		url:     url,
		o:       o,
		owner:   o.ID + "/" + slipstream.NewMessageID(),
		changed: make(chan struct{}),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	s.calls = calls{via: s}
	for attempt := 0; ; attempt++ {
		c, err := Dial(ctx, url, o.Options)
		if err == nil {
			s.setConn(c)
			go s.run(c)
			return s, nil
		}
		if permanent(err) {
			return nil, err
		}
		if s.o.OnDisconnect != nil {
			s.o.OnDisconnect(err)
		}
		t := time.NewTimer(s.backoff(attempt))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("slipstream client: connecting to %s: %w (last error: %w)", url, ctx.Err(), err)
		}
	}
}

// permanent tells the dial errors that a retry does not mend.
func permanent(err error) bool {
	var de *DialError
	if errors.As(err, &de) {
		switch de.StatusCode {
		case 401, 403, 404:
			return true
		}
		return false
	}
	var refused *slipstream.Error
	return errors.As(err, &refused)
}

// backoff is the wait before redial attempt n (0-based): full jitter below
// MinBackoff doubled n times, capped at MaxBackoff.
func (s *Session) backoff(n int) time.Duration {
	bound := s.o.MaxBackoff
	if n < 62 && s.o.MinBackoff <= s.o.MaxBackoff>>n { // no overflow
		bound = s.o.MinBackoff << n
	}
	return time.Duration(rand.Int64N(int64(bound)) + 1)
}

// run watches the connection and redials when it ends, until Close.
func (s *Session) run(c *Client) {
	defer close(s.done)
	for {
		select {
		case <-c.Done():
		case <-s.closing:
			c.Close()
			return
		}
		err := c.Err()
		c.Close()
		s.setDown(err)
		for attempt := 0; ; attempt++ {
			t := time.NewTimer(s.backoff(attempt))
			select {
			case <-t.C:
			case <-s.closing:
				t.Stop()
				return
			}
			var derr error
			c, derr = s.dial()
			if derr == nil {
				break
			}
			s.setDown(derr)
		}
		s.setConn(c)
	}
}

// dial opens a connection, giving up when the session closes.
func (s *Session) dial() (*Client, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	return Dial(ctx, s.url, s.o.Options)
}

func (s *Session) setConn(c *Client) {
	s.connects.Add(1)
	s.mu.Lock()
	s.cur = c
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	if s.o.OnConnect != nil {
		s.o.OnConnect(c.Hello())
	}
}

func (s *Session) setDown(err error) {
	s.mu.Lock()
	s.cur = nil
	s.lastErr = err
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	if s.o.OnDisconnect != nil {
		s.o.OnDisconnect(err)
	}
}

// Client returns the current connection, waiting for one until ctx is
// done: for what a Session does not wrap (Request, Send, Reply). It fails
// like any Client when that connection ends; call Client again for the
// next one.
func (s *Session) Client(ctx context.Context) (*Client, error) {
	for {
		s.mu.Lock()
		c, changed, lastErr := s.cur, s.changed, s.lastErr
		s.mu.Unlock()
		if c != nil && c.Err() == nil {
			return c, nil
		}
		// Disconnected, or the connection ended and the session's goroutine
		// has not noticed yet: wait for the next change.
		select {
		case <-s.closing:
			return nil, ErrClosed
		default:
		}
		select {
		case <-changed:
		case <-s.closing:
			return nil, ErrClosed
		case <-ctx.Done():
			if lastErr != nil {
				return nil, fmt.Errorf("slipstream client: waiting for a connection: %w (last error: %w)", ctx.Err(), lastErr)
			}
			return nil, fmt.Errorf("slipstream client: waiting for a connection: %w", ctx.Err())
		}
	}
}

// Connected reports whether a connection is up.
func (s *Session) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur != nil && s.cur.Err() == nil
}

// Stats returns the session's counters.
func (s *Session) Stats() SessionStats {
	return SessionStats{
		Connects: s.connects.Load(), Handled: s.handled.Load(), Failed: s.failed.Load(),
		Duplicates: s.duplicates.Load(), Busy: s.busy.Load(),
	}
}

// retry runs call on the current connection, again on the next one while
// it fails because its connection ended, until ctx is done or the session
// closes.
func (s *Session) retry(ctx context.Context, call func(c *Client) error) error {
	for {
		c, err := s.Client(ctx)
		if err != nil {
			return err
		}
		err = call(c)
		var lost *ConnError
		if errors.As(err, &lost) || (errors.Is(err, ErrClosed) && !s.isClosed()) {
			if ctx.Err() != nil {
				return err
			}
			continue
		}
		return err
	}
}

func (s *Session) isClosed() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// Publish publishes the data message m and waits for its ACK, as
// Client.Publish does, but across reconnections: when the connection ends
// before the ACK, m is sent again on the next connection with the same
// messageId (set here when m has none), and the instance acknowledges a
// copy it has already stored without storing it twice. It returns the ACK,
// the instance's refusal as a *slipstream.Error, ctx's error, or ErrClosed.
func (s *Session) Publish(ctx context.Context, m *slipstream.Message) (*slipstream.Message, error) {
	if m.MessageID == "" {
		m.MessageID = slipstream.NewMessageID()
	}
	return retried(ctx, s, func(c *Client) (*slipstream.Message, error) { return c.Publish(ctx, m) })
}

// First sends the request m and returns its first reply, as Client.First
// does, sending it again on the next connection when the connection ends
// first (a command keeps its messageId: an instance that stored it already
// acknowledges the copy without running it again, and its reply may then
// be lost with the old connection, so the call waits for ctx).
func (s *Session) First(ctx context.Context, m *slipstream.Message) (*slipstream.Message, error) {
	if m.MessageID == "" {
		m.MessageID = slipstream.NewMessageID()
	}
	return retried(ctx, s, func(c *Client) (*slipstream.Message, error) { return c.First(ctx, m) })
}

// retried is s.retry for a call that returns a value.
func retried[T any](ctx context.Context, s *Session, call func(*Client) (T, error)) (T, error) {
	var v T
	err := s.retry(ctx, func(c *Client) error {
		var err error
		v, err = call(c)
		return err
	})
	return v, err
}

// Close ends the session and its connection: pending calls fail with
// ErrClosed and Subscribe returns ErrClosed. It is idempotent and returns
// once the session's goroutines have ended.
func (s *Session) Close() error {
	s.closeOnce.Do(func() { close(s.closing) })
	<-s.done
	return nil
}
