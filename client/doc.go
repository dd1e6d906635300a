// Package client is the Go SDK for applications that talk to a Slipstream
// instance over its WebSocket protocol (PROTOCOL.md).
//
// A Client is one WebSocket connection to one instance. It publishes data
// messages (SK, SA, SW, CMD) and waits for the instance's hop-by-hop ACK,
// which means the message is durably stored and will reach every recipient;
// it receives the messages routed to it on Deliveries and acknowledges them.
//
//	c, err := client.Dial(ctx, "ws://127.0.0.1:7070/ws", client.Options{
//		ID:   "payments-1",         // a durable link: deliveries wait for it while it is away
//		Tags: []string{"payments"}, // targetedTags select links by these
//	})
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//
//	ack, err := c.Publish(ctx, &slipstream.Message{
//		Type:  slipstream.TypeSK,
//		Key:   "order:123",
//		Value: json.RawMessage(`{"status":"paid"}`),
//	})
//	var refused *slipstream.Error
//	if errors.As(err, &refused) {
//		// the instance answered ERR: refused.Code is "invalid", "too_large", ...
//	}
//
//	for d := range c.Deliveries() {
//		apply(d.Msg)
//		if err := d.Ack(); err != nil { // after the effect is durable
//			return err
//		}
//	}
//
// # Contract
//
//   - Publish assigns a messageId when the message has none (it sets
//     m.MessageID) and returns the ACK, or the instance's ERR as a
//     *slipstream.Error (use errors.As), or ctx's error, or an error saying the
//     connection is gone. PublishAsync is the pipelined form for throughput.
//   - Deliveries are handed out in the order the instance sent them, from one
//     reader goroutine. When Options.Buffer deliveries are waiting, the client
//     stops reading the connection (TCP back-pressure): keep draining
//     Deliveries, also on a client that only publishes, because ACKs for
//     publishes arrive on the same connection. The channel is closed when the
//     connection ends.
//   - A receiver must acknowledge every data message (Delivery.Ack, or
//     Options.AutoAck); an unacknowledged delivery is sent again after the
//     instance's ack timeout, so a receiver sees it at least once.
//   - ERR frames that answer no pending publish (bad frames sent with
//     SendRaw, refusals without a messageId) go to Errors, which is buffered
//     and drops what nobody reads.
//   - Close is idempotent, fails every pending publish with ErrClosed, and
//     returns once the client's goroutines have ended.
//
// A Client is safe for concurrent use. It speaks one connection: when it
// breaks, pending publishes fail with the connection's error and Done is
// closed; reconnection, receiver-side dedup stores and Get/Command requests
// build on this type.
package client
