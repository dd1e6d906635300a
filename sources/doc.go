// Package sources holds Slipstream's source kinds: the parts that read frames
// from the network and emit them into a pipeline as *pipeline.Envelope.
//
// # websocket_server
//
// The websocket_server source accepts WebSocket connections (PROTOCOL.md
// "Transport") and attaches each to a link of the link registry:
//
//   - With ?id=pi-1&tags=a,b&acks=false in the URL the connection belongs at
//     once to the durable client link "pi-1" (the link is registered before
//     the upgrade, so what is published once the client is connected reaches
//     it). Without an id it belongs to a fresh ephemeral link
//     (link.NewEphemeralID) with the listener's default_tags. A bad query
//     string is refused with HTTP 400 before the upgrade.
//   - If the first text frame is a HELLO it is validated (protocol 1 or
//     absent, role peer|client, an instanceId that is not ours) and the
//     connection moves to the durable link named by the HELLO's instanceId
//     (tags: the HELLO's, else the ones the connection had; acks: the
//     HELLO's, else the connection's, which default to the listener's). Our
//     own HELLO is queued through Registry.AttachWith once that link is
//     registered and before its writer sees the connection: the remote
//     learns it is attached only when it is, and our HELLO precedes every
//     pending delivery. A bad HELLO is answered with ERR (and counts as a bad
//     frame); the connection stays where it was. A later HELLO is emitted
//     like any frame (the decode stage refuses it). "First" means the first
//     text frame within max_frame: binary or oversized frames before it do
//     not count.
//   - Every other text frame is emitted as an envelope whose Raw is a fresh
//     slice and whose From is the *link.Link.
//   - An inbound connection is never "dialled" by us (Conn.Dialed is
//     false): on a peer link (HELLO role "peer", or an id that a
//     websocket_client peer block declares) it takes part in the tie-break
//     between duplicate peer connections (see websocket_client). A
//     connection that loses it is closed with 1000 "duplicate peer
//     connection" and gets no HELLO answer. When the HELLO names a
//     configured peer, the peer block's tags, acks and allow_commands apply,
//     not the HELLO's or the listener's (link.Spec.Configured).
//
// The source answers some bad frames itself and keeps the connection open: a
// binary frame gets ERR unsupported, a frame over max_frame gets ERR
// too_large (it is read and discarded, never buffered whole). A frame over
// 16 x max_frame closes the connection with 1009 (gorilla's read limit), and
// more than 100 bad frames in a row close it with 1008.
//
// Listening starts in Start (the daemon calls it before any Run), so Addr
// is known, and a busy port reported, before Run; Run listens itself if
// Start was not called. Ready (for /readyz) is nil while listening. Run serves
// until its context is cancelled, then stops accepting, stops READING every
// connection (their read deadline is set in the past) and waits for the read
// loops; the connections stay attached so that ACKs of messages still in the
// pipeline reach their senders. Close detaches and closes what is left.
//
// Browsers are held to gorilla's same-origin check (a page on another
// origin cannot open a connection); non-browser clients send no Origin
// header and are not affected.
//
// # Connections
//
// Conn (link.Conn) has one writer goroutine per connection. Control frames
// (ACK, ERR, HELLO, replies) go through a queue of 1024 that never blocks:
// when it is full the connection is closed as a slow consumer (1008). Data
// frames go through a small queue and SendData blocks while it is full. The
// writer prefers control frames, and every write has a 10 s deadline.
//
// Heartbeat: the writer pings every heartbeat.interval; the read deadline is
// heartbeat.timeout, extended by every frame and pong, so a silent
// connection is closed (1001) after the timeout.
//
// Both sources read their connections with the same loop (reader in
// read.go): in-flight credit (at most MaxInFlight envelopes plus queued
// control frames per connection), ERR for binary and oversized frames,
// 1008 after too many bad frames in a row, and Envelope.From = the link.
//
// # websocket_client
//
// The websocket_client source dials the instances listed as `peer "ID"`
// blocks and keeps one link per peer up. Decisions, beyond CONFIG.md:
//
//   - Build loads every peer's TLS files (an unreadable or empty file is a
//     Build error naming the attribute and the file; relative paths are
//     relative to the working directory) and declares each peer in the link
//     registry with Ensure as a durable, Configured peer link: it is a
//     recipient from the start, and deliveries wait in its outbox until the
//     first connection. A peer id equal to the instance's own is an error.
//   - One dialler goroutine per peer. A dial is: WebSocket handshake (TCP,
//     TLS and upgrade within 10 s; the environment's HTTP(S)_PROXY is
//     honoured), our HELLO (role peer, acks true, the instance's tags and
//     cluster group), then the peer's answer within heartbeat.timeout. The
//     answer must be a HELLO of protocol 1 (or absent) whose instanceId is
//     the peer block's label; anything else (another id, an ERR, a close)
//     is a failed attempt, and another id is logged as an error naming both.
//     The connection is then attached with AttachWith and read with the
//     server's loop; a HELLO after that goes to the pipeline, whose decode
//     stage refuses it.
//   - token is sent as `Authorization: Bearer <token>` and never logged;
//     URLs are logged without credentials.
//   - TLS (wss://): TLS 1.2 at least; ca_file replaces the system roots;
//     cert_file + key_file give a client certificate (mutual TLS);
//     server_name overrides the URL host for verification;
//     insecure_skip_verify logs a loud warning at Build. A tls block on a
//     ws:// URL is a config error.
//   - Redial policy (backoff.go): the n-th consecutive failure waits a
//     uniform random delay in [interval, min(max_interval, interval x 2^n)]
//     (full jitter above the floor). A connection that stayed up at least
//     max_interval resets the count when it ends, and the redial waits
//     interval; one that ended sooner counts as a failure, so a flapping
//     peer backs off like an unreachable one. After `attempts` failures in a
//     row the dialler waits `cooldown` and starts over from a count of 0;
//     attempts = 0 never gives up and keeps waiting at most max_interval.
//   - Both ends dialling: the link registry keeps the connection dialled by
//     the instance whose id sorts lower (bytewise) and closes the other with
//     1000 "duplicate peer connection" (link.ErrDuplicate; see package
//     link). A dialler whose peer id sorts lower than ours does not dial
//     while the link is up on the peer's connection (that one would win):
//     it waits for it to end (Conn.Done), then waits interval and checks
//     again. A dialler whose id sorts lower dials anyway, and its connection
//     replaces the peer's, so both ends always settle on the same, lower-id
//     connection. Losing the tie-break is not a failure: the dialler waits
//     interval and checks again.
//   - Heartbeat: as for accepted connections (ping every interval, dead
//     after timeout of silence); a dead peer connection is closed (1001
//     "heartbeat timeout"), detached, counted and redialled.
//   - Run stops dialling when its context ends, stops reading every
//     connection and returns; the connections stay attached so that ACKs of
//     messages in flight reach the peers. Close detaches and closes them
//     (1001) and waits for every goroutine.
//   - Metrics: slipstream_peer_connects_total{peer,outcome} with outcome ok
//     (attached), error (dial, HELLO or attach failed) or duplicate (the
//     connection lost the tie-break during the handshake or the attach);
//     slipstream_peer_heartbeat_timeouts_total{peer}.
//   - Client.PeerState(id) is "connected" while the peer's link is up (on
//     either connection), else what the dialler does: idle, connecting,
//     backoff, cooldown, stopped.
//
// Routing by tags across instances (PROTOCOL.md "Routing"): a peer link
// carries its peer block's tags, so a message targeted at ["gcp"] is sent
// to the peer whose block says tags = ["gcp"]; that instance applies the
// same rule to its own links, so at the last hop only clients whose link
// carries a targeted tag (HELLO tags, ?tags=, else the listener's
// default_tags) receive it.
package sources
