package client

import (
	"sync/atomic"

	slipstream "github.com/slipstream-sync/slipstream"
)

// Delivery is one message the instance routed to this client.
type Delivery struct {
	// Msg is the decoded message; fields this package does not know are in
	// Msg.Extra, byte for byte.
	Msg *slipstream.Message
	// Raw is the frame exactly as received.
	Raw []byte

	c     *Client
	acked atomic.Bool
}

// Ack sends the hop-by-hop ACK for the delivery (its messageId and
// clusterGroupId), telling the instance to stop retransmitting it. Only data
// messages that are not replies are acknowledged; for anything else, for a
// client that announced acks false, and for a second call, Ack does nothing.
// It returns an error only when the connection has ended.
func (d *Delivery) Ack() error {
	if d.c == nil || !d.c.acks || !d.Msg.Type.IsData() || d.Msg.IsReply() {
		return nil
	}
	if !d.acked.CompareAndSwap(false, true) {
		return nil
	}
	return d.c.enqueue(outFrame{data: ackFrame(d.Msg)})
}
