package main

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// relay is the bench's baseline: a bare JSON relay over the same WebSocket
// library, with nothing of Slipstream's work (no storage, no dedup, no
// outbox, no retransmission). Each text frame is decoded with encoding/json
// into map[string]json.RawMessage, re-encoded, and forwarded to every other
// connection; the sender gets a minimal {"type":"ACK","messageId":...} so
// the same harness drives it. To route like the instance does, it answers
// HELLO (keeping the connection's tags) and honours targetedTags; ACK frames
// from receivers are dropped. For a mesh baseline, relays are chained into a
// tree with follow: a relay dials its parent as a peer and relays what comes
// down to its own connections (never back up, so no dedup is needed).
type relay struct {
	ln  net.Listener
	srv *http.Server

	mu     sync.RWMutex
	conns  map[*relayConn]struct{}
	closed bool
	wg     sync.WaitGroup // the server's and the connections' goroutines
}

type relayConn struct {
	ws   *websocket.Conn
	out  chan []byte   // frames for the writer; a full queue blocks senders
	done chan struct{} // closed when the connection ends
	once sync.Once

	mu   sync.Mutex
	tags []string

	upstream bool // dialled by follow: frames come down it, none go up
}

const relayQueue = 4096

var relayHello = []byte(`{"type":"HELLO","protocol":1,"instanceId":"relay","clusterGroupId":"relay","role":"peer","acks":true}`)

// startRelay listens on 127.0.0.1 (a free port) and serves until close.
func startRelay() (*relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &relay{ln: ln, conns: map[*relayConn]struct{}{}}
	up := websocket.Upgrader{ReadBufferSize: 4096, WriteBufferSize: 4096}
	r.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ws, err := up.Upgrade(w, req, nil)
		if err != nil {
			return
		}
		c := &relayConn{ws: ws, out: make(chan []byte, relayQueue), done: make(chan struct{})}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			_ = ws.Close()
			return
		}
		r.conns[c] = struct{}{}
		r.wg.Add(2)
		r.mu.Unlock()
		go r.write(c)
		r.read(c)
	})}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		_ = r.srv.Serve(ln)
	}()
	return r, nil
}

// follow dials the relay at url as a peer named id carrying tags, and
// relays what it sends to r's own connections whose tags match.
func (r *relay) follow(url, id string, tags []string) error {
	d := *websocket.DefaultDialer
	d.HandshakeTimeout = dialTimeout
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		return err
	}
	hello, err := json.Marshal(map[string]any{"type": "HELLO", "protocol": 1, "instanceId": id,
		"clusterGroupId": id, "role": "peer", "tags": tags})
	if err != nil {
		_ = ws.Close()
		return err
	}
	c := &relayConn{ws: ws, out: make(chan []byte, relayQueue), done: make(chan struct{}), upstream: true}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		_ = ws.Close()
		return errRelayClosed
	}
	r.conns[c] = struct{}{}
	r.wg.Add(2)
	r.mu.Unlock()
	go r.write(c)
	go r.read(c)
	if !c.send(hello) {
		return errRelayClosed
	}
	return nil
}

// url is the relay's WebSocket URL.
func (r *relay) url() string { return "ws://" + r.ln.Addr().String() + "/ws" }

// close stops the relay and waits for its connections' goroutines.
func (r *relay) close() {
	_ = r.srv.Close() // the listener; hijacked connections are ours
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.end()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

func (c *relayConn) end() {
	c.once.Do(func() {
		close(c.done)
		_ = c.ws.Close()
	})
}

// send queues a frame for c; false when c has ended.
func (c *relayConn) send(frame []byte) bool {
	select {
	case c.out <- frame:
		return true
	case <-c.done:
		return false
	}
}

func (r *relay) write(c *relayConn) {
	defer r.wg.Done()
	for {
		select {
		case f := <-c.out:
			if err := c.ws.WriteMessage(websocket.TextMessage, f); err != nil {
				c.end()
				return
			}
		case <-c.done:
			return
		}
	}
}

func (r *relay) read(c *relayConn) {
	defer r.wg.Done()
	defer func() {
		c.end()
		r.mu.Lock()
		delete(r.conns, c)
		r.mu.Unlock()
	}()
	for {
		typ, data, err := c.ws.ReadMessage()
		if err != nil {
			return
		}
		if typ != websocket.TextMessage {
			continue
		}
		if err := r.handle(c, data); err != nil {
			return
		}
	}
}

var errRelayClosed = errors.New("relay connection closed")

func (r *relay) handle(c *relayConn, data []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return nil // a bare relay ignores what it cannot read
	}
	var typ string
	_ = json.Unmarshal(m["type"], &typ)
	switch typ {
	case "ACK":
		return nil
	case "HELLO":
		if c.upstream {
			return nil // the parent's answer to our HELLO
		}
		var tags []string
		_ = json.Unmarshal(m["tags"], &tags)
		c.mu.Lock()
		c.tags = tags
		c.mu.Unlock()
		if !c.send(relayHello) {
			return errRelayClosed
		}
		return nil
	}
	var targeted []string
	_ = json.Unmarshal(m["targetedTags"], &targeted)
	frame, err := json.Marshal(m)
	if err != nil {
		return nil
	}
	r.mu.RLock()
	recipients := make([]*relayConn, 0, len(r.conns))
	for o := range r.conns {
		if o != c && !o.upstream && o.matches(targeted) {
			recipients = append(recipients, o)
		}
	}
	r.mu.RUnlock()
	for _, o := range recipients {
		o.send(frame)
	}
	ack, _ := json.Marshal(struct {
		Type      string          `json:"type"`
		MessageID json.RawMessage `json:"messageId,omitempty"`
	}{"ACK", m["messageId"]})
	if !c.send(ack) {
		return errRelayClosed
	}
	return nil
}

// matches reports whether c carries one of the targeted tags (all match
// when there are none).
func (c *relayConn) matches(targeted []string) bool {
	if len(targeted) == 0 {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range targeted {
		for _, have := range c.tags {
			if t == have {
				return true
			}
		}
	}
	return false
}
