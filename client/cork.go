package client

import (
	"net"
	"sync"
)

// corkLimit is how much corked output is buffered before it is written
// anyway.
const corkLimit = 64 << 10

// corkConn lets the writer goroutine batch WebSocket frames into one TCP
// write: while corked, writes are buffered; uncorking flushes them. Control
// frames (pongs, close) written by other goroutines meanwhile are buffered
// too and go out with the batch, which is at most one queue drain away.
type corkConn struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    []byte
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked || len(p) >= corkLimit {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	if len(c.buf) >= corkLimit {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// set corks or uncorks; uncorking flushes. A nil corkConn (the dial bypassed
// it) does nothing.
func (c *corkConn) set(corked bool) error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = corked
	if corked {
		return nil
	}
	return c.flushLocked()
}

func (c *corkConn) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	if cap(c.buf) > 4*corkLimit {
		c.buf = nil
	} else {
		c.buf = c.buf[:0]
	}
	return err
}
