package sources

import (
	"errors"
	"net"
	"time"

	"github.com/gorilla/websocket"

	"github.com/slipstream-sync/slipstream/pipeline"
)

// Heartbeat defaults (CONFIG.md).
const (
	DefaultHeartbeatInterval = 10 * time.Second
	DefaultHeartbeatTimeout  = 30 * time.Second
)

// HeartbeatConfig is the heartbeat block of the websocket sources
// (PROTOCOL.md "Transport": ping/pong control frames are the heartbeat).
type HeartbeatConfig struct {
	Interval time.Duration `hcl:"interval,optional" doc:"how often to ping the remote side"`
	Timeout  time.Duration `hcl:"timeout,optional" doc:"close the connection when no frame and no pong arrived for this long; must exceed interval"`
}

// DefaultHeartbeat returns interval 10s, timeout 30s.
func DefaultHeartbeat() HeartbeatConfig {
	return HeartbeatConfig{Interval: DefaultHeartbeatInterval, Timeout: DefaultHeartbeatTimeout}
}

// Validate implements pipeline.Validator; field names are relative to the
// heartbeat block.
func (h *HeartbeatConfig) Validate() error {
	switch {
	case h.Interval <= 0:
		return &pipeline.FieldError{Field: "interval", Err: errors.New("must be greater than 0")}
	case h.Timeout <= h.Interval:
		return &pipeline.FieldError{Field: "timeout", Err: errors.New("must be longer than interval (a pong needs a ping first)")}
	}
	return nil
}

// startHeartbeat installs the ping and pong handlers and the first read
// deadline. Called once by newConn, before the read loop starts.
func (c *Conn) startHeartbeat() {
	c.ws.SetPongHandler(func(string) error {
		c.extendRead()
		return nil
	})
	c.ws.SetPingHandler(func(data string) error {
		c.extendRead()
		// As gorilla's default handler: answer at once, from the read loop.
		err := c.ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(writeWait))
		var ne net.Error
		if err == websocket.ErrCloseSent || errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		return err
	})
	c.extendRead()
}

// extendRead pushes the read deadline to now + heartbeat.timeout, unless
// reading was stopped. Called from the read loop (frames, pings, pongs).
func (c *Conn) extendRead() {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if !c.readStopped {
		_ = c.ws.SetReadDeadline(time.Now().Add(c.hb.Timeout))
	}
}

// StopReading makes the read loop's current and later reads fail at once,
// while writes go on: used at shutdown so that ACKs of messages in flight
// still reach the remote. Safe to call from any goroutine, more than once.
func (c *Conn) StopReading() {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.readStopped = true
	_ = c.ws.SetReadDeadline(time.Unix(1, 0))
}

// ReadingStopped reports whether StopReading was called (a read error is
// then the expected end of the read loop, not a broken connection).
func (c *Conn) ReadingStopped() bool {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	return c.readStopped
}
