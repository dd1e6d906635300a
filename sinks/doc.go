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
// A writer that has had nothing to do for a second (and, for a durable
// link, has an empty outbox) parks: its goroutine returns, and the next Notify, ACK, ERR or change of
// connection starts it again, so that an idle connection holds no writer
// goroutine. The sink wakes parked durable writers for their periodic pass
// (limits and rescan, every limitEvery). The writer:
//
//   - Sends from memory while it keeps up: Notify appends to a queue bounded
//     by memory_queue entries and 1 MiB (any seq above the last notified one
//     is "next": gaps left by failed batches are fine). When the queue is
//     full, the link is down, or the writer is still catching up, Notify
//     drops the copy and the writer reads pages of 256 from the store
//     (ReadOutbox) in seq order until it has caught up, then returns to
//     memory. Caught up means: a short page, and everything notified since
//     the read began is in memory (every entry notified before was committed
//     before its Notify, so the read saw it): while the writer reads, Notify
//     keeps the copies again, within the same bounds, and the entries the
//     read also returned are dropped from memory; if the queue overflowed,
//     the writer reads again. A notification at or below one already seen (an
//     out-of-order commit, e.g. a DLQ replay racing the persist stage)
//     rewinds the store cursor; entries already loaded are skipped, and
//     acknowledged ones are gone from the store. Whoever writes outbox
//     entries outside the persist stage (DLQ replay) should Notify them too,
//     or they wait for the link's next connection.
//   - Sends only while a connection is attached, at most `window` unacked
//     deliveries in flight, through Conn.SendData (which blocks on that
//     connection only: one slow link never slows another).
//   - Matches ACKs by (clusterGroupId, messageId), which the sink passes
//     along with each notified entry (an entry read back from the store has
//     its header decoded with slipstream.DecodeHeader), and deletes
//     acknowledged entries from the store in batches, at most 10 ms after
//     the first (completion.go, deleteDelay). An ACK that names no cluster
//     matches by messageId alone.
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
// of in-flight frames (window × frame size: 1024 × ~300 B by default).
//
// # Outbox limits
//
// The disk is bounded too: a link's outbox holds at most max_pending entries
// (default 1,000,000; 0 = unlimited), none older than max_age (default 168h;
// 0 = unlimited). When an outbox is over a limit, its OLDEST entries (lowest
// seq first, whether or not they are in flight) move to the dead-letter
// store, where they can be listed, replayed and purged like any dead letter:
//
//   - max_pending: the entries beyond the limit, with reason
//     "outbox limit: max_pending N exceeded";
//   - max_age: the entries whose message is older than max_age, with reason
//     "outbox limit: older than max_age". Age is measured from the message's
//     `timestamp` field (ms since the epoch at the origin; the decode stage
//     fills it on entry when a client left it out), so it is the time since
//     the message entered the mesh, and the origin's clock counts. The walk
//     goes in seq order and ends at the first entry that is not too old; an
//     entry without a timestamp is never evicted by age.
//
// The outbox format is not changed for this: entries are the encoded
// messages, as the persist stage writes them.
//
// Enforcement runs on the writer goroutine, never per message: a pass every
// 30 seconds, a pass when the writer starts (limits may have changed across
// a restart), and a pass at most once a second while Notify finds the outbox
// over max_pending (so an outbox that keeps overflowing is trimmed once a
// second and may exceed max_pending by what arrives in that second). A
// writer blocked sending to a stalled connection enforces once SendData
// returns (at the latest when the heartbeat closes the connection). Each
// pass that moves entries logs one line at Warn with the counts, and counts
// them in slipstream_link_deliveries_total{outcome="dead_lettered"} and
// slipstream_outbox_limit_evictions_total{link,limit}. An ACK that arrives
// for an evicted entry is ignored.
//
// The periodic pass also reads the outbox's head from the very beginning:
// if the link is up and the head is an entry the writer neither holds nor
// will read (below its cursor), the writer reads the store again from there.
// That never happens unless an acknowledged entry came back, which Badger's
// value-log GC can do (package store, "Known issue"): within 30 seconds, and
// without waiting for the link's next connection, such an entry is deleted
// again if the writer completed it in its current session (it remembers the
// seqs of its last 256 completions), else sent again and deleted on its ACK.
//
// The writer knows its outbox's size without scanning it: it counts the
// entries in the store when it starts (keys only), then adds one per Notify
// and subtracts one per entry it deletes or dead-letters. Every writer of
// outbox entries must therefore Notify them (the sink does for the persist
// stage; DLQ replay does itself). The periodic pass recounts when the outbox
// is near max_pending or after a failed store write.
//
// # Metrics
//
// slipstream_link_deliveries_total{kind,outcome}: kind is the link's kind
// (peer or client); outcome is sent, acked, redelivered or dead_lettered
// (after max_attempts, a refusal, or an outbox limit).
// slipstream_outbox_limit_evictions_total{link,limit}: deliveries moved to
// the dead-letter store by max_pending or max_age.
// slipstream_outbox_depth{link}: entries in the outbox of each durable link
// (the writer's count above, read at scrape time).
// slipstream_outbox_oldest_seconds{link}: age of the oldest entry of each
// durable link, from its message's timestamp (one store read per non-empty
// outbox per scrape); 0 when empty.
// slipstream_ack_rtt_seconds: from the last send of a delivery to its ACK.
package sinks
