package sources

import (
	"sync"

	"github.com/gorilla/websocket"

	"github.com/slipstream-sync/slipstream/internal/link"
)

// liveConns is a source's set of live connections, each with the link it
// is attached to (nil until attached), so that the source can stop reading
// them and close them when it stops. websocket_server and websocket_client
// both keep one.
type liveConns struct {
	mu       sync.Mutex
	conns    map[*Conn]*link.Link
	stopping bool // no new connections; reads are stopping
}

// add records c as live, forgets it once its writer is done, and runs
// onAdd (if not nil) under the set's lock, so that what onAdd records is
// seen by whoever stops the source afterwards. Once the source is stopping
// it closes c (1001) instead and returns false.
func (lc *liveConns) add(c *Conn, onAdd func()) bool {
	lc.mu.Lock()
	if lc.stopping {
		lc.mu.Unlock()
		c.Close(websocket.CloseGoingAway, "instance shutting down")
		return false
	}
	if lc.conns == nil {
		lc.conns = map[*Conn]*link.Link{}
	}
	lc.conns[c] = nil
	if onAdd != nil {
		onAdd()
	}
	lc.mu.Unlock()
	c.afterExit(func() {
		lc.mu.Lock()
		delete(lc.conns, c)
		lc.mu.Unlock()
	})
	return true
}

// setLink records the link c is attached to (for closeAll).
func (lc *liveConns) setLink(c *Conn, l *link.Link) {
	lc.mu.Lock()
	if _, ok := lc.conns[c]; ok {
		lc.conns[c] = l
	}
	lc.mu.Unlock()
}

// snapshot refuses new connections from now on and returns the live ones.
func (lc *liveConns) snapshot() map[*Conn]*link.Link {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	lc.stopping = true
	conns := make(map[*Conn]*link.Link, len(lc.conns))
	for c, l := range lc.conns {
		conns[c] = l
	}
	return conns
}

// stopReads refuses new connections and stops reading the live ones (they
// stay attached: ACKs of messages in flight still reach their senders).
func (lc *liveConns) stopReads() {
	for c := range lc.snapshot() {
		c.StopReading()
	}
}

// closeAll refuses new connections, detaches every live one from its link,
// closes it (1001) and waits for its writer to finish.
func (lc *liveConns) closeAll(links *link.Registry) {
	conns := lc.snapshot()
	for c, l := range conns {
		if l != nil {
			links.Detach(l, c)
		}
		c.Close(websocket.CloseGoingAway, "instance shutting down")
	}
	for c := range conns {
		<-c.Exited()
	}
}
