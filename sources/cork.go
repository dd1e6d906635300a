package sources

import (
	"context"
	"net"
	"sync"
)

// This file batches a connection's writes: the writer loop "corks" the
// socket, writes every frame that is waiting (gorilla/websocket writes each
// frame with its own Write call), and uncorks, so a burst of frames costs one
// write(2) instead of one per frame, the biggest CPU cost of a relay (see
// BENCHMARKS.md). A frame that is alone is written at once: corking never
// adds latency, it only merges what is already queued.

// corkMax is how much a corked connection buffers before it writes anyway.
const corkMax = 64 << 10

// corkConn is a net.Conn whose writes can be held back and flushed as one.
// Safe for concurrent use (gorilla writes pongs and close frames from the
// reading goroutine).
type corkConn struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    []byte
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	if len(c.buf) >= corkMax {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// cork holds writes back until uncork.
func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// uncork writes what was held back, in one call, and lets writes through.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.flushLocked()
}

func (c *corkConn) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	if cap(c.buf) > 4*corkMax {
		c.buf = nil // do not keep a huge buffer after a burst of big frames
	} else {
		c.buf = c.buf[:0]
	}
	return err
}

// corker is what the writer loop needs of a connection: nil when the socket
// cannot be corked.
func corker(c net.Conn) *corkConn {
	cc, _ := c.(*corkConn)
	return cc
}

// corkListener wraps every accepted connection in a corkConn.
type corkListener struct{ net.Listener }

func (l corkListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &corkConn{Conn: c}, nil
}

// dialCork is a websocket.Dialer NetDialContext whose connections can be
// corked (under TLS, if any: the records still leave in one write).
func dialCork(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &corkConn{Conn: c}, nil
}
