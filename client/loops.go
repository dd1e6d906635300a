package client

import (
	"errors"

	"github.com/gorilla/websocket"

	slipstream "github.com/slipstream-sync/slipstream"
)

// writeLoop is the only writer of data frames (gorilla allows one). It
// sends whatever is queued in one go: frames are corked into one TCP write
// per batch instead of one per frame.
func (c *Client) writeLoop() {
	defer close(c.writerDone)
	for {
		select {
		case <-c.closing:
			if errors.Is(c.Err(), ErrClosed) {
				c.writeQueued(len(c.out)) // Close: what was queued before it still goes out
			}
			return
		case f := <-c.out:
			c.cork.Cork()
			err := c.write(f)
			if err == nil {
				err = c.writeQueued(512)
			}
			if ferr := c.cork.Uncork(); err == nil {
				err = ferr
			}
			if err != nil {
				c.fail(err)
				return
			}
		}
	}
}

// writeQueued writes up to n frames that are waiting, without blocking.
func (c *Client) writeQueued(n int) error {
	for range n {
		select {
		case f := <-c.out:
			if err := c.write(f); err != nil {
				return err
			}
		default:
			return nil
		}
	}
	return nil
}

func (c *Client) write(f outFrame) error {
	typ := websocket.TextMessage
	if f.binary {
		typ = websocket.BinaryMessage
	}
	return c.ws.WriteMessage(typ, f.data)
}

// readLoop is the only reader. It completes publishes, answers the
// handshake, hands replies to their requests and hands out deliveries; when the connection ends it fails
// what is pending and closes Deliveries and Errors.
func (c *Client) readLoop() {
	defer close(c.readerDone)
	defer func() {
		c.failPending()
		c.failRequests()
		close(c.deliveries)
		close(c.errs)
	}()
	for {
		typ, data, err := c.ws.ReadMessage()
		if err != nil {
			c.fail(err)
			return
		}
		if typ != websocket.TextMessage {
			c.reportLocal("", "the instance sent a binary frame")
			continue
		}
		m, err := slipstream.Decode(data, incomingLimits)
		if err != nil {
			c.reportLocal("", "the instance sent a frame that does not decode: "+err.Error())
			continue
		}
		if c.opts.Observe != nil {
			c.opts.Observe(m, data)
		}
		if !c.dispatch(m, data) {
			return
		}
	}
}

// dispatch handles one frame from the instance; false means the client is
// closing.
func (c *Client) dispatch(m *slipstream.Message, raw []byte) bool {
	switch m.Type {
	case slipstream.TypeACK:
		c.complete(m.MessageID, m, nil)
	case slipstream.TypeERR:
		if c.complete(m.MessageID, nil, errorOf(m)) || c.refuseRequest(m.MessageID, errorOf(m)) {
			return true
		}
		if c.awaiting.CompareAndSwap(true, false) {
			c.handshake <- m
			return true
		}
		c.report(m)
	case slipstream.TypeHELLO:
		if c.awaiting.CompareAndSwap(true, false) {
			c.handshake <- m
		}
	default:
		if m.IsReply() && c.reply(m) {
			return true
		}
		d := &Delivery{Msg: m, Raw: raw, c: c}
		if c.opts.AutoAck {
			if err := d.Ack(); err != nil {
				return false
			}
		}
		select {
		case c.deliveries <- d:
		case <-c.closing:
			return false
		}
	}
	return true
}

// errorOf turns an ERR frame into the error a publish returns.
func errorOf(m *slipstream.Message) *slipstream.Error {
	return &slipstream.Error{Code: m.Code, MessageID: m.MessageID, Text: m.Error}
}

// report hands an unmatched ERR to Errors, dropping it when nobody reads.
func (c *Client) report(m *slipstream.Message) {
	select {
	case c.errs <- m:
	default:
	}
}

// reportLocal reports a problem the client found with what the instance
// sent, as an ERR with code protocol.
func (c *Client) reportLocal(id, text string) {
	c.report(slipstream.NewErr(id, slipstream.CodeProtocol, text))
}

// ackFrame is the hop-by-hop ACK of m.
func ackFrame(m *slipstream.Message) []byte {
	return slipstream.Encode(&slipstream.Message{
		Type: slipstream.TypeACK, MessageID: m.MessageID, ClusterGroupID: m.ClusterGroupID,
	})
}
