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
package sources
