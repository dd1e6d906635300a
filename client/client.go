package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/corknet"
)

// Errors of the client itself (the instance's refusals are *slipstream.Error).
var (
	// ErrClosed is returned by calls on a client after Close, and given to
	// the publishes still pending when Close is called.
	ErrClosed = errors.New("slipstream client: closed")
	// ErrPending is returned by Publish and PublishAsync when a publish with
	// the same messageId is still waiting for its ACK.
	ErrPending = errors.New("slipstream client: a publish with this messageId is already pending")
)

// ConnError reports that the connection ended for a reason other than Close
// (the instance closed it, the network failed, a write failed). Pending
// publishes fail with it; they may or may not have been stored.
type ConnError struct{ Err error }

func (e *ConnError) Error() string { return "slipstream client: connection lost: " + e.Err.Error() }
func (e *ConnError) Unwrap() error { return e.Err }

// DialError reports that the WebSocket connection could not be opened: the
// network failed, or the instance answered the handshake with an HTTP
// status (401: a token is needed or was refused; 404: wrong path).
type DialError struct {
	URL        string
	StatusCode int    // 0 when no HTTP answer came
	Status     string // e.g. "401 Unauthorized"
	Err        error
}

func (e *DialError) Error() string {
	if e.StatusCode != 0 {
		return fmt.Sprintf("slipstream client: dial %s: %v (HTTP %s)", e.URL, e.Err, e.Status)
	}
	return fmt.Sprintf("slipstream client: dial %s: %v", e.URL, e.Err)
}

func (e *DialError) Unwrap() error { return e.Err }

// Options configure a Client. The zero value is an anonymous client that
// acknowledges what it receives.
type Options struct {
	// ID is the link id announced in HELLO (role client). "" sends no HELLO:
	// the instance gives the connection an ephemeral id, whose pending
	// deliveries are dropped when it disconnects.
	ID string
	// Tags are announced in HELLO (they need an ID); messages whose
	// targetedTags match one of them are routed to this client.
	Tags []string
	// Acks says whether the client acknowledges deliveries (announced in
	// HELLO; nil means true). false asks for fire-and-forget delivery and
	// needs an ID.
	Acks *bool
	// AutoAck acknowledges each data delivery as soon as it is read, before
	// it is handed out on Deliveries (benchmarks and simple consumers; a
	// consumer that must not lose a message acknowledges after applying it).
	AutoAck bool
	// Header is sent with the WebSocket handshake (e.g. Authorization).
	Header http.Header
	// Dialer dials the connection (nil: websocket.DefaultDialer).
	Dialer *websocket.Dialer
	// Buffer is how many deliveries wait in Deliveries before the client
	// stops reading the connection (back-pressure). Default 1024.
	Buffer int
	// Observe, when set, is called from the reader goroutine with every
	// frame the instance sends (decoded, and as received), before the
	// client handles it: for tools that show the conversation (slipstream
	// pub -raw). It must not block and must not keep m or raw for writing.
	Observe func(m *slipstream.Message, raw []byte)
}

const (
	defaultBuffer    = 1024
	writeQueueLen    = 1024     // frames waiting for the writer goroutine
	errorsBuffer     = 64       // unmatched ERR frames kept for Errors
	maxIncomingFrame = 64 << 20 // larger frames from the instance close the connection
	closeGrace       = time.Second
	helloTimeout     = 30 * time.Second // when Dial's ctx has no deadline
)

// incomingLimits decodes what the instance sends: its own limits already
// applied, so only the frame size needs room.
var incomingLimits = &slipstream.Limits{MaxFrame: maxIncomingFrame}

// Client is one connection to a Slipstream instance. It is safe for
// concurrent use.
type Client struct {
	calls // Get, GetArray, GetWeighted, Command, SetKey, SetArray, SetWeighted, DeleteKey

	opts  Options
	acks  bool
	ws    *websocket.Conn
	cork  *corknet.Conn // nil when a custom TLS dial hook bypassed it
	hello *slipstream.Message

	out        chan outFrame
	deliveries chan *Delivery
	errs       chan *slipstream.Message
	handshake  chan *slipstream.Message // the answer to our HELLO (HELLO or ERR)
	awaiting   atomic.Bool              // our HELLO is unanswered

	mu         sync.Mutex
	pending    map[string]func(*slipstream.Message, error) // by messageId
	requests   map[string]*Replies                         // open requests, by messageId
	ended      map[string]struct{}                         // recently ended requests
	endedOrder []string                                    // ended, oldest first
	err        error                                       // why the connection ended; set once

	closing    chan struct{} // closed when the connection ends or Close begins
	closeOnce  sync.Once
	readerDone chan struct{}
	writerDone chan struct{}
}

type outFrame struct {
	data   []byte
	binary bool
}

// Dial connects to the instance at url (ws:// or wss://, path included,
// e.g. "ws://127.0.0.1:7070/ws"). With an ID it sends HELLO and waits for
// the instance's HELLO; an ERR answer is returned as a *slipstream.Error.
// ctx bounds the dial and the handshake.
func Dial(ctx context.Context, url string, o Options) (*Client, error) {
	acks := o.Acks == nil || *o.Acks
	if o.ID == "" && (!acks || len(o.Tags) > 0) {
		return nil, errors.New("slipstream client: Options.Tags and Options.Acks are announced in HELLO and need Options.ID")
	}
	if o.Buffer <= 0 {
		o.Buffer = defaultBuffer
	}
	d := *websocket.DefaultDialer
	if o.Dialer != nil {
		d = *o.Dialer
	}
	var cork *corknet.Conn
	dial := d.NetDialContext
	if dial == nil && d.NetDial != nil {
		nd := d.NetDial
		dial = func(_ context.Context, network, addr string) (net.Conn, error) { return nd(network, addr) }
	}
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	d.NetDial = nil
	d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		cork = corknet.New(nc)
		return cork, nil
	}
	ws, resp, err := d.DialContext(ctx, url, o.Header)
	if err != nil {
		de := &DialError{URL: url, Err: err}
		if resp != nil {
			de.StatusCode, de.Status = resp.StatusCode, resp.Status
		}
		return nil, de
	}
	ws.SetReadLimit(maxIncomingFrame)
	c := &Client{
		opts:       o,
		acks:       acks,
		ws:         ws,
		cork:       cork,
		out:        make(chan outFrame, writeQueueLen),
		deliveries: make(chan *Delivery, o.Buffer),
		errs:       make(chan *slipstream.Message, errorsBuffer),
		handshake:  make(chan *slipstream.Message, 1),
		pending:    map[string]func(*slipstream.Message, error){},
		requests:   map[string]*Replies{},
		ended:      map[string]struct{}{},
		closing:    make(chan struct{}),
		readerDone: make(chan struct{}),
		writerDone: make(chan struct{}),
	}
	c.calls = calls{via: c}
	if o.ID != "" {
		c.awaiting.Store(true)
	}
	go c.readLoop()
	go c.writeLoop()
	if o.ID == "" {
		return c, nil
	}
	if err := c.sayHello(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// sayHello sends our HELLO and waits for the instance's answer.
func (c *Client) sayHello(ctx context.Context) error {
	hello := &slipstream.Message{
		Type:       slipstream.TypeHELLO,
		Protocol:   slipstream.ProtocolVersion,
		InstanceID: c.opts.ID,
		Tags:       c.opts.Tags,
		Role:       slipstream.RoleClient,
		Acks:       &c.acks,
	}
	if err := c.enqueue(outFrame{data: slipstream.Encode(hello)}); err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, helloTimeout)
		defer cancel()
	}
	answer := func(m *slipstream.Message) error {
		if m.Type == slipstream.TypeERR {
			return errorOf(m)
		}
		c.hello = m
		return nil
	}
	select {
	case m := <-c.handshake:
		return answer(m)
	case <-c.closing:
		select {
		case m := <-c.handshake: // an ERR, then the instance hung up
			return answer(m)
		default:
		}
		return c.Err()
	case <-ctx.Done():
		return fmt.Errorf("slipstream client: waiting for the instance's HELLO: %w", ctx.Err())
	}
}

// Hello returns the instance's HELLO (its instanceId, clusterGroupId and
// tags), or nil when the client sent none.
func (c *Client) Hello() *slipstream.Message { return c.hello }

// Deliveries returns the messages routed to this client (SK SA SW CMD, and
// requests and replies it did not send with Request), in the order they
// arrived. It is closed when the connection ends.
func (c *Client) Deliveries() <-chan *Delivery { return c.deliveries }

// Errors returns the ERR frames that answer no pending publish. It is
// buffered; when nobody reads it, further ERR frames are dropped. It is closed
// when the connection ends.
func (c *Client) Errors() <-chan *slipstream.Message { return c.errs }

// Done is closed when the connection ends (Close, or a failure).
func (c *Client) Done() <-chan struct{} { return c.closing }

// Err returns nil while the connection is up, ErrClosed after Close, or a
// *ConnError saying why the connection ended.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Send queues m for sending as it is (no messageId is assigned, no ACK is
// awaited). It blocks while the write queue is full.
func (c *Client) Send(m *slipstream.Message) error {
	return c.enqueue(outFrame{data: slipstream.Encode(m)})
}

// SendRaw queues one frame as it is, in a text or a binary WebSocket
// message: for testing how an instance handles bad input.
func (c *Client) SendRaw(frame []byte, binary bool) error {
	return c.enqueue(outFrame{data: frame, binary: binary})
}

func (c *Client) enqueue(f outFrame) error {
	select {
	case <-c.closing:
		return c.Err()
	default:
	}
	select {
	case c.out <- f:
		return nil
	case <-c.closing:
		return c.Err()
	}
}

// Close ends the connection: it stops the writer (after it has written the
// frames already queued: ACKs given with Delivery.Ack, publishes whose
// PublishAsync returned), sends a WebSocket close frame, waits briefly for the instance's answer, and returns once every
// goroutine of the client has ended. Pending publishes fail with ErrClosed.
// Close is idempotent. Do not call it from a PublishAsync callback.
func (c *Client) Close() error {
	c.end(ErrClosed)
	c.awaitDone(c.writerDone)
	_ = c.ws.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(closeGrace))
	c.awaitDone(c.readerDone)
	_ = c.ws.Close()
	<-c.writerDone
	<-c.readerDone
	return nil
}

// awaitDone waits up to closeGrace for ch, then closes the network
// connection so that blocked reads and writes return.
func (c *Client) awaitDone(ch <-chan struct{}) {
	t := time.NewTimer(closeGrace)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
		_ = c.ws.Close()
	}
}

// end records why the connection ends (the first reason wins) and tells the
// goroutines to stop.
func (c *Client) end(err error) {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		close(c.closing)
	})
}

// fail ends the connection because of a failure.
func (c *Client) fail(err error) {
	c.end(&ConnError{Err: err})
	_ = c.ws.Close()
}
