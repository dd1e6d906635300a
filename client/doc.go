// Package client is the Go SDK for applications that talk to a Slipstream
// instance over its WebSocket protocol (PROTOCOL.md).
//
// Most applications use a Session: it keeps them connected to their local
// instance, redialling with backoff when the connection breaks and resuming
// durable delivery where it stopped; its Publish and typed calls retry on
// the next connection with the same messageId (the instance stores a
// message once whatever the number of copies); Subscribe hands deliveries
// to a handler and acknowledges each one after the handler returns nil.
//
//	s, err := client.Connect(ctx, "ws://127.0.0.1:7070/ws", client.SessionOptions{
//		Options: client.Options{
//			ID:   "payments-1",         // a durable link: deliveries wait for it while it is away
//			Tags: []string{"payments"}, // targetedTags select links by these
//		},
//	})
//	if err != nil {
//		return err
//	}
//	defer s.Close()
//
//	go s.Subscribe(ctx, func(ctx context.Context, d *client.Delivery) error {
//		return apply(ctx, d.Msg) // nil: ACK; an error: the instance sends it again
//	}, client.SubscribeOptions{Dedup: client.NewMemoryDedup(0)})
//
//	_, err = s.SetKey(ctx, "order:123", map[string]string{"status": "paid"})
//	var refused *slipstream.Error
//	if errors.As(err, &refused) {
//		// the instance answered ERR: refused.Code is "invalid", "too_large", ...
//	}
//
// # Exactly once in effect
//
// The instance retries a delivery until the receiver's ACK arrives, so a
// receiver can see a message again: the connection broke after the handler
// ran and before the ACK was read, or an application connected to two
// redundant instances of one cluster group receives each message from
// both. SubscribeOptions.Dedup makes the handler run once per
// (clusterGroupId, messageId) within a window: a receiver claims the
// message in a DedupStore, runs the handler, marks it done and
// acknowledges; a copy that finds it done is acknowledged without the
// handler, and a copy that finds it claimed by another receiver waits for
// that receiver's outcome. Three stores: MemoryDedup (bounded, one
// process), client/redisdedup (SET NX with expiry: shared by receivers in
// several processes) and client/badgerdedup (on disk: survives the
// receiver's restarts).
//
// # One connection
//
// A Client is one WebSocket connection to one instance, the layer a
// Session is built on and what tools use: it publishes data messages (SK,
// SA, SW, CMD) and waits for the instance's hop-by-hop ACK, which means the
// message is durably stored and will reach every recipient; it receives the
// messages routed to it on Deliveries and acknowledges them.
//
//	c, err := client.Dial(ctx, "ws://127.0.0.1:7070/ws", client.Options{ID: "payments-1"})
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//	for d := range c.Deliveries() {
//		apply(d.Msg)
//		if err := d.Ack(); err != nil { // after the effect is durable
//			return err
//		}
//	}
//
// Reading state and running commands are requests: every instance (or, for
// an application command, every client) that a request reaches may answer it
// with a reply carrying inReplyTo.
//
//	v, found, err := c.Get(ctx, "order:123")                     // GK: the first reply
//	w, found, err := c.GetWeighted(ctx, "split", client.Targeting("azure"))
//	res, err := c.Command(ctx, "slipstream.set_log_level", map[string]string{"level": "debug"})
//
//	r, err := c.Request(ctx, &slipstream.Message{Type: slipstream.TypeGK, Key: "order:123"})
//	for {
//		reply, err := r.Next() // every reply, until ctx is done
//		if err != nil {
//			break // context.DeadlineExceeded: the normal end
//		}
//		fmt.Println(reply.OriginInstanceID, string(reply.Value))
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
//   - Request sends a get (GK GA GW) or a command (CMD), assigning a
//     messageId when it has none, and queues every reply whose inReplyTo
//     matches until the ctx given to it is done: the instance never says
//     that nobody answered, so give ctx a deadline. A CMD is data: Request
//     waits for its ACK (Replies.Ack) and returns an ERR as a
//     *slipstream.Error; a get is not acknowledged, and its ERR ends the
//     replies (Replies.Next returns it). Replies never appear on
//     Deliveries, also when they come after the request ended (the last
//     1024 request ids are remembered); replies to requests sent otherwise
//     (Send) are deliveries.
//   - Get, GetArray, GetWeighted and Command return the first reply (First);
//     a reply with an error (a failed command, a GA on a key set by SK) is a
//     *ReplyError; no reply before ctx's deadline is an error that
//     errors.Is context.DeadlineExceeded. Targeting chooses who is asked.
//   - A client that receives a get or an application command answers it with
//     Reply (replies are not stored and not acknowledged).
//   - Close is idempotent, fails every pending publish with ErrClosed (and
//     ends every open request with it), and returns once the client's
//     goroutines have ended.
//
// Clients and Sessions are safe for concurrent use. A Client speaks one
// connection: when it breaks, pending publishes and open requests fail with
// the connection's error and Done is closed; a Session then redials.
package client
