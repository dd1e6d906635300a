package client

import (
	"context"
	"errors"
	"fmt"
	"sync"

	slipstream "github.com/slipstream-sync/slipstream"
)

// ErrRequestClosed is returned by Replies.Next after Replies.Close.
var ErrRequestClosed = errors.New("slipstream client: request closed")

const (
	// maxQueuedReplies is how many replies one request keeps for Next; more
	// are dropped (and counted by Replies.Dropped).
	maxQueuedReplies = 4096
	// endedRequests is how many ended request ids the client remembers so
	// that replies arriving after the requester stopped waiting are dropped
	// instead of being handed out on Deliveries.
	endedRequests = 1024
)

// Replies are the answers to one request (a get or a command) sent with
// Client.Request. Every reply whose inReplyTo is the request's messageId is
// queued for Next, in arrival order, until the request ends: when the
// context given to Request is done, when the instance refuses the request
// with ERR, when Close is called, or when the connection ends.
type Replies struct {
	c   *Client
	id  string
	ack *slipstream.Message

	mu      sync.Mutex
	queue   []*slipstream.Message
	err     error // why the request ended; nil while it runs
	dropped int
	notify  chan struct{} // a reply was queued or the request ended
	acked   chan struct{} // closed on the ACK of a CMD request
	stop    func() bool   // stops the context watcher; set under mu
}

// ID returns the request's messageId (replies carry it in inReplyTo).
func (r *Replies) ID() string { return r.id }

// Ack returns the instance's ACK of a CMD request (a command is a data
// message: the instance stores it, then acknowledges it). It is nil for
// gets, which are not stored and not acknowledged.
func (r *Replies) Ack() *slipstream.Message { return r.ack }

// Dropped returns how many replies were dropped because more than 4096 were
// waiting for Next.
func (r *Replies) Dropped() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dropped
}

// Next returns the next reply, waiting for it. When the request has ended
// and every queued reply was returned, it returns why it ended: the error of
// the context given to Request (context.DeadlineExceeded is how a request
// that nobody else answers ends), the instance's refusal as a
// *slipstream.Error, ErrRequestClosed, or the connection's error.
func (r *Replies) Next() (*slipstream.Message, error) {
	for {
		r.mu.Lock()
		if len(r.queue) > 0 {
			m := r.queue[0]
			r.queue[0] = nil
			r.queue = r.queue[1:]
			r.mu.Unlock()
			return m, nil
		}
		err := r.err
		r.mu.Unlock()
		if err != nil {
			return nil, err
		}
		<-r.notify
	}
}

// Close ends the request: replies that arrive afterwards are dropped. Next
// returns the replies already queued, then ErrRequestClosed. Close is
// idempotent.
func (r *Replies) Close() { r.end(ErrRequestClosed) }

// push queues a reply; the reader goroutine calls it.
func (r *Replies) push(m *slipstream.Message) {
	r.mu.Lock()
	if r.err == nil {
		if len(r.queue) < maxQueuedReplies {
			r.queue = append(r.queue, m)
		} else {
			r.dropped++
		}
	}
	r.mu.Unlock()
	r.signal()
}

// end records why the request ends (the first reason wins) and unregisters
// it from the client.
func (r *Replies) end(err error) {
	r.mu.Lock()
	first := r.err == nil
	if first {
		r.err = err
	}
	stop := r.stop
	r.mu.Unlock()
	if !first {
		return
	}
	if stop != nil {
		stop()
	}
	r.c.unregister(r.id)
	r.signal()
}

func (r *Replies) signal() {
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// Request sends the request m (a get, GK GA GW, or a command, CMD) and
// returns its replies. It sets m.MessageID when m has none. Replies are
// collected until ctx is done (give it a deadline: the instance never says
// that nobody answered), so several instances may answer one request.
//
// A CMD is a data message: Request waits for its ACK and returns the
// instance's refusal (ERR forbidden, invalid, ...) as a *slipstream.Error.
// A get is not acknowledged: Request returns once it is queued, and a
// refusal ends the replies with a *slipstream.Error from Next.
//
// Replies are not deliveries: they do not appear on Deliveries, also when
// they arrive after the request ended (for the last 1024 requests).
func (c *Client) Request(ctx context.Context, m *slipstream.Message) (*Replies, error) {
	if !m.Type.IsRequest() && m.Type != slipstream.TypeCMD {
		return nil, fmt.Errorf("slipstream client: Request sends gets (GK GA GW) and commands (CMD), not %q; use Publish", m.Type)
	}
	if m.IsReply() {
		return nil, errors.New("slipstream client: Request got a reply (inReplyTo is set); answer requests with Reply")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if m.MessageID == "" {
		m.MessageID = slipstream.NewMessageID()
	}
	r := &Replies{c: c, id: m.MessageID, notify: make(chan struct{}, 1)}
	isCmd := m.Type == slipstream.TypeCMD
	if isCmd {
		r.acked = make(chan struct{})
	}
	frame := slipstream.Encode(m)

	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	if _, dup := c.pending[r.id]; dup {
		c.mu.Unlock()
		return nil, ErrPending
	}
	if _, dup := c.requests[r.id]; dup {
		c.mu.Unlock()
		return nil, ErrPending
	}
	c.requests[r.id] = r
	if isCmd {
		c.pending[r.id] = func(ack *slipstream.Message, err error) {
			if err != nil {
				r.end(err)
				return
			}
			r.ack = ack
			close(r.acked)
		}
	}
	c.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { r.end(ctx.Err()) })
	r.mu.Lock()
	r.stop = stop
	ended := r.err != nil
	r.mu.Unlock()
	if ended {
		stop()
	}

	if err := c.enqueue(outFrame{data: frame}); err != nil {
		c.forget(r.id)
		r.end(err)
		return nil, err
	}
	if !isCmd {
		return r, nil
	}
	for {
		select {
		case <-r.acked:
			return r, nil
		case <-r.notify: // a reply came first, or the request ended before the ACK
			r.mu.Lock()
			err := r.err
			r.mu.Unlock()
			if err != nil { // refused, ctx done, or connection lost
				c.forget(r.id)
				return nil, err
			}
		}
	}
}

// unregister removes the request id and remembers it, so that its late
// replies are dropped.
func (c *Client) unregister(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.requests[id]; !ok {
		return
	}
	delete(c.requests, id)
	c.ended[id] = struct{}{}
	c.endedOrder = append(c.endedOrder, id)
	if len(c.endedOrder) > endedRequests {
		delete(c.ended, c.endedOrder[0])
		c.endedOrder = c.endedOrder[1:]
	}
}

// reply hands a reply to its request; false when it answers no request of
// this client, ended or not (then it is a delivery).
func (c *Client) reply(m *slipstream.Message) bool {
	c.mu.Lock()
	r, ok := c.requests[m.InReplyTo]
	_, ended := c.ended[m.InReplyTo]
	c.mu.Unlock()
	if ok {
		r.push(m)
	}
	return ok || ended
}

// refuseRequest ends the request id with the instance's ERR; false when no
// request has that id.
func (c *Client) refuseRequest(id string, err error) bool {
	if id == "" {
		return false
	}
	c.mu.Lock()
	r, ok := c.requests[id]
	c.mu.Unlock()
	if ok {
		r.end(err)
	}
	return ok
}

// failRequests ends every request with the reason the connection ended.
func (c *Client) failRequests() {
	c.mu.Lock()
	rs := make([]*Replies, 0, len(c.requests))
	for _, r := range c.requests {
		rs = append(rs, r)
	}
	err := c.err
	c.mu.Unlock()
	for _, r := range rs {
		r.end(err)
	}
}

// Reply answers the request req (a get or a command delivered to this
// client) with reply: it sets reply's type to req's when empty, inReplyTo
// to req's messageId, a new messageId when it has none, and for gets the
// key. Replies are not stored and not acknowledged; the instance routes
// them back to the requester hop by hop. A command reply carries Result
// (any JSON) or Error (text).
func (c *Client) Reply(req, reply *slipstream.Message) error {
	if req.MessageID == "" || req.IsReply() || (!req.Type.IsRequest() && req.Type != slipstream.TypeCMD) {
		return errors.New("slipstream client: Reply answers a get or a command that has a messageId")
	}
	if reply.Type == "" {
		reply.Type = req.Type
	}
	reply.InReplyTo = req.MessageID
	if reply.MessageID == "" {
		reply.MessageID = slipstream.NewMessageID()
	}
	if req.Type.IsRequest() && reply.Key == "" {
		reply.Key = req.Key
	}
	return c.Send(reply)
}
