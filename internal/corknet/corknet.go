// Package corknet batches a connection's writes: a writer "corks" the
// socket, writes every WebSocket frame that is waiting (gorilla/websocket
// writes each frame with its own Write call), and uncorks, so a burst of
// frames costs one write(2) instead of one per frame, the biggest CPU cost of
// a relay (BENCHMARKS.md). A frame that is alone is written at once: corking
// never adds latency, it only merges what is already queued. The instance's
// connections (sources) and the Go SDK's (client) both use it.
package corknet

import (
	"context"
	"net"
	"sync"
)

// Limit is how much a corked connection buffers before it writes anyway;
// a single write at least that large goes straight through.
const Limit = 64 << 10

// Conn is a net.Conn whose writes can be held back and flushed as one. Safe
// for concurrent use (gorilla writes pongs and close frames from the reading
// goroutine; while corked they join the batch, at most one queue drain
// away). The methods of a nil *Conn do nothing.
type Conn struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    []byte
}

// New wraps c.
func New(c net.Conn) *Conn { return &Conn{Conn: c} }

// Write implements net.Conn.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked || len(p) >= Limit {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	if len(c.buf) >= Limit {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Cork holds writes back until Uncork.
func (c *Conn) Cork() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// Uncork writes what was held back, in one call, and lets writes through.
func (c *Conn) Uncork() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.flushLocked()
}

func (c *Conn) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	if cap(c.buf) > 4*Limit {
		c.buf = nil // do not keep a huge buffer after a burst of big frames
	} else {
		c.buf = c.buf[:0]
	}
	return err
}

// Of returns c as a *Conn, or nil when it is not one.
func Of(c net.Conn) *Conn {
	cc, _ := c.(*Conn)
	return cc
}

// Listener wraps every accepted connection in a Conn.
type Listener struct{ net.Listener }

// Accept implements net.Listener.
func (l Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return New(c), nil
}

// Dial is a websocket.Dialer NetDialContext whose connections are Conns
// (under TLS, if any: the records still leave in one write).
func Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return New(c), nil
}
