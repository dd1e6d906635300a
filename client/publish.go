package client

import (
	"context"
	"fmt"

	slipstream "github.com/slipstream-sync/slipstream"
)

// Publish sends the data message m and waits for the instance's answer. It
// sets m.MessageID when m has none. It returns the ACK (m is durably stored
// and will reach every recipient), or the instance's refusal as a
// *slipstream.Error (nothing of m was stored), or ctx's error (m may still
// be stored: publish it again with the same messageId to be sure; the
// instance deduplicates), or an error saying the connection ended.
func (c *Client) Publish(ctx context.Context, m *slipstream.Message) (*slipstream.Message, error) {
	type result struct {
		ack *slipstream.Message
		err error
	}
	ch := make(chan result, 1)
	err := c.PublishAsync(m, func(ack *slipstream.Message, err error) { ch <- result{ack, err} })
	if err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		return r.ack, r.err
	case <-ctx.Done():
		c.forget(m.MessageID)
		return nil, ctx.Err()
	}
}

// PublishAsync queues the data message m and returns without waiting, so
// that many publishes can be in flight on one connection. It sets m.MessageID
// when m has none. done is called exactly once, from the client's reader
// goroutine, with the ACK or the error Publish would return; it must not
// block and must not call Close. When PublishAsync itself returns an error,
// done is not called.
func (c *Client) PublishAsync(m *slipstream.Message, done func(ack *slipstream.Message, err error)) error {
	if m.Type.Known() && !m.Type.IsData() {
		return fmt.Errorf("slipstream client: Publish sends data messages (SK SA SW CMD), not %s; use Send", m.Type)
	}
	if m.MessageID == "" {
		m.MessageID = slipstream.NewMessageID()
	}
	id := m.MessageID
	frame := slipstream.Encode(m)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	if _, dup := c.pending[id]; dup {
		c.mu.Unlock()
		return ErrPending
	}
	c.pending[id] = done
	c.mu.Unlock()
	if err := c.enqueue(outFrame{data: frame}); err != nil {
		if c.forget(id) {
			return err
		}
		// The reader failed the publish already and called done.
	}
	return nil
}

// complete finishes the pending publish id; false when none is pending.
func (c *Client) complete(id string, ack *slipstream.Message, err error) bool {
	if id == "" {
		return false
	}
	c.mu.Lock()
	done, ok := c.pending[id]
	if ok {
		delete(c.pending, id)
	}
	c.mu.Unlock()
	if ok {
		done(ack, err)
	}
	return ok
}

// forget drops the pending publish id without calling its done; false when
// it was no longer pending.
func (c *Client) forget(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.pending[id]
	delete(c.pending, id)
	return ok
}

// failPending fails every pending publish with the reason the connection
// ended. c.err is set by then, so no publish is added afterwards.
func (c *Client) failPending() {
	c.mu.Lock()
	pending, err := c.pending, c.err
	c.pending = map[string]func(*slipstream.Message, error){}
	c.mu.Unlock()
	for _, done := range pending {
		done(nil, err)
	}
}
