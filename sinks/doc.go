// Package sinks holds Slipstream's sink kinds: the parts at the end of a
// pipeline that the fanout stage hands stored messages to.
//
// # websocket
//
// The websocket sink delivers to links. Build installs an outbox factory on
// the link registry, so every link, existing or future, gets an *Outbox: its
// durable, ordered writer. An instance has one websocket sink (several
// pipelines may list it): a second one would replace the factory. Deliver
// only wakes the writers (Notify with the entry's seq and frame); it never
// touches the network.
//
// Each Outbox runs one goroutine, started by the sink's Start (the runner
// calls it before any source runs) or at creation for links that appear
// later, and stopped by Close, which returns once the goroutine has exited.
// The writer:
//
//   - Sends from memory while it keeps up: Notify appends to a queue bounded
//     by memory_queue entries and 1 MiB (any seq above the last notified one
//     is "next": gaps left by failed batches are fine). When the queue is
//     full, the link is down, or the writer is still catching up, Notify
//     drops the copy and the writer reads pages of 256 from the store
//     (ReadOutbox) in seq order until it has caught up, then returns to
//     memory. Caught up means: a short page, and nothing notified since the
//     read began (every notified entry was committed before its Notify, so
//     the read saw it). A notification at or below one already seen (an
//     out-of-order commit, e.g. a DLQ replay racing the persist stage)
//     rewinds the store cursor; entries already loaded are skipped, and
//     acknowledged ones are gone from the store. Whoever writes outbox
//     entries outside the persist stage (DLQ replay) should Notify them too,
//     or they wait for the link's next connection.
//   - Sends only while a connection is attached, at most `window` unacked
//     deliveries in flight, through Conn.SendData (which blocks on that
//     connection only: one slow link never slows another).
//   - Matches ACKs by (clusterGroupId, messageId), decoded from each frame
//     with slipstream.Decode when loaded, and deletes acknowledged entries
//     from the store in batches. An ACK that names no cluster matches by
//     messageId alone.
//   - Re-sends a delivery whose ACK has not come after ack_timeout, doubling
//     the wait each time up to backoff_max. An attempt is spent only when its
//     ack timeout elapses while the link is up: a disconnect clears the
//     in-flight state without spending one (the counts already spent are
//     remembered), and on (re)connect everything pending is re-sent from the
//     store, from the beginning, in order. After max_attempts spent attempts
//     (0: never) the delivery moves to the dead-letter store with reason
//     "no ACK after N attempts".
//   - Handles ERR answers (Refused): rate_limited and overloaded are retried
//     after the backoff without spending an attempt; every other code
//     (bad_json, invalid, too_large, unsupported, forbidden, protocol, and
//     codes this version does not know) dead-letters the delivery at once
//     with reason "refused by <link>: <code>: <reason>".
//   - For links that do not ACK (acks = false), deletes the entry right after
//     SendData accepted it: fire and forget.
//
// Memory per link is bounded whatever the backlog: the memory queue
// (memory_queue entries, 1 MiB), one store page (256 entries) and the window
// of in-flight frames.
//
// Metrics: slipstream_link_deliveries_total{kind,outcome} where kind is the
// link's kind (peer or client) and outcome is sent, acked, redelivered or
// dead_lettered; slipstream_outbox_depth{link}, pending entries of each
// durable link (counted once at start, then kept up to date on Notify, ACK
// and dead-lettering: approximate); slipstream_ack_rtt_seconds, from the last
// send of a delivery to its ACK.
package sinks
