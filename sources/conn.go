package sources

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/corknet"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// Queue sizes and deadlines of a connection.
const (
	// ControlQueue is how many control frames may wait for the writer; one
	// more closes the connection as a slow consumer. The reader keeps
	// in-flight messages plus queued control frames under MaxInFlight, so a
	// remote that reads its ACKs slowly is slowed down (TCP back-pressure)
	// long before this is reached. The queue grows with what waits and is
	// given back once drained: an idle connection holds none of it.
	ControlQueue = 2048
	// keptControl is the capacity of a drained control queue kept for reuse;
	// a larger one (after a burst) is dropped.
	keptControl = 64
	// MaxInFlight bounds a connection's messages inside the pipeline plus its
	// control frames waiting to be written; reading pauses at the bound.
	MaxInFlight = 1024
	// dataQueue is how many data frames may wait; SendData blocks beyond.
	// The outbox writer keeps its own window, so this only smooths writes.
	dataQueue = 16
	// writeWait bounds every write (and ping) on the socket.
	writeWait = 10 * time.Second
	// closeWait bounds the close handshake, and the flush of queued control
	// frames when a connection is closed.
	closeWait = time.Second
	// maxCloseReason is the longest reason a close frame can carry.
	maxCloseReason = 123
)

// ErrConnClosed is returned by SendData once the connection is closed.
var ErrConnClosed = errors.New("websocket connection closed")

// Conn is one live WebSocket connection. It implements link.Conn for the
// link registry, the stages (Reply) and the websocket sink (SendData); the
// source that owns it reads frames with readFrame from a single goroutine.
//
// One writer goroutine per connection owns every data write; control frames
// are preferred over data. It runs only while there is something to write (a
// frame, a ping due, the close): an idle connection has none. Close may be
// called from any goroutine.
type Conn struct {
	ws     *websocket.Conn
	remote string
	local  string
	dialed bool // this instance dialled it (websocket_client)
	hb     HeartbeatConfig
	log    *slog.Logger

	cmu     sync.Mutex
	control [][]byte     // queued control frames, oldest at control[chead]; guarded by cmu
	chead   int          // index of the oldest queued control frame
	ctlLen  atomic.Int64 // len(control) - chead, for waitRoom and the writer
	data    chan []byte
	done    chan struct{} // closed by Close: no more sends accepted
	exited  chan struct{} // closed when the writer has closed the socket

	wmu      sync.Mutex
	writing  bool        // a writer goroutine runs; guarded by wmu
	pingDue  atomic.Bool // the heartbeat timer fired: the writer pings
	pingTime *time.Timer // arms pingDue every heartbeat interval

	hmu       sync.Mutex
	exitHooks []func() // run by the writer once the socket is closed
	hooksRan  bool

	closeOnce   sync.Once
	closeCode   int // 0: the socket broke, no close frame
	closeReason string
	closeBy     time.Time // deadline of the writes after Close

	rmu         sync.Mutex // guards the read deadline against StopReading
	readStopped bool

	inflight atomic.Int64  // emitted envelopes not yet out of the pipeline
	room     chan struct{} // signalled when inflight or the control queue shrinks
}

var (
	_ link.Conn      = (*Conn)(nil)
	_ link.Direction = (*Conn)(nil)
)

// newConn wraps an upgraded (dialed false) or dialled (dialed true)
// connection and starts its heartbeat. readLimit is gorilla's
// hard cap: a frame over it closes the connection with 1009.
func newConn(ws *websocket.Conn, dialed bool, hb HeartbeatConfig, readLimit int64, log *slog.Logger) *Conn {
	c := &Conn{
		ws:     ws,
		remote: ws.RemoteAddr().String(),
		local:  ws.LocalAddr().String(),
		dialed: dialed,
		hb:     hb,
		log:    log,
		data:   make(chan []byte, dataQueue),
		done:   make(chan struct{}),
		exited: make(chan struct{}),
		room:   make(chan struct{}, 1),
	}
	ws.SetReadLimit(readLimit)
	c.startHeartbeat()
	// Armed once assigned, so that its func (and the writer it kicks) sees it.
	c.pingTime = time.AfterFunc(math.MaxInt64, func() {
		c.pingDue.Store(true)
		c.kick()
	})
	c.pingTime.Reset(hb.Interval)
	return c
}

// SendControl implements link.Conn: it queues a control frame without
// blocking. When the control queue is full the remote is not reading fast
// enough: the connection is closed (1008 "slow consumer") and false is
// returned, as it is once the connection is closed.
func (c *Conn) SendControl(frame []byte) bool {
	select {
	case <-c.done:
		return false
	default:
	}
	if !c.pushControl(frame) {
		c.log.Warn("closing a slow consumer: its control queue is full", "remote", c.remote, "queue", ControlQueue)
		c.Close(websocket.ClosePolicyViolation, "slow consumer")
		return false
	}
	return true
}

// pushControl queues a control frame for the writer; false when ControlQueue
// frames are waiting already.
func (c *Conn) pushControl(frame []byte) bool {
	c.cmu.Lock()
	if len(c.control)-c.chead >= ControlQueue {
		c.cmu.Unlock()
		return false
	}
	if c.chead > 0 && len(c.control) == cap(c.control) && c.chead >= len(c.control)/2 {
		// Slide the waiting frames down instead of growing: a queue that
		// never drains completely stays within twice what waits.
		n := copy(c.control, c.control[c.chead:])
		clear(c.control[n:])
		c.control, c.chead = c.control[:n], 0
	}
	c.control = append(c.control, frame)
	c.ctlLen.Add(1)
	c.cmu.Unlock()
	c.kick()
	return true
}

// popControl takes the oldest queued control frame, if any.
func (c *Conn) popControl() ([]byte, bool) {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	if c.chead == len(c.control) {
		return nil, false
	}
	f := c.control[c.chead]
	c.control[c.chead] = nil
	c.chead++
	c.ctlLen.Add(-1)
	if c.chead == len(c.control) { // drained
		if cap(c.control) > keptControl {
			c.control = nil
		} else {
			c.control = c.control[:0]
		}
		c.chead = 0
	}
	return f, true
}

// afterExit has f run once the writer has closed the socket (at once when it
// has already): a watcher without a goroutine of its own per connection.
func (c *Conn) afterExit(f func()) {
	c.hmu.Lock()
	if !c.hooksRan {
		c.exitHooks = append(c.exitHooks, f)
		c.hmu.Unlock()
		return
	}
	c.hmu.Unlock()
	f()
}

// exit closes Exited and runs the afterExit hooks, on the writer's way out.
func (c *Conn) exit() {
	c.pingTime.Stop()
	close(c.exited)
	c.hmu.Lock()
	hooks := c.exitHooks
	c.exitHooks, c.hooksRan = nil, true
	c.hmu.Unlock()
	for _, f := range hooks {
		f()
	}
}

// SendData implements link.Conn: it queues a data frame, blocking while the
// data queue is full. It returns ErrConnClosed once the connection is closed
// and ctx's error when ctx is done first. A frame queued is not yet written:
// the outbox writer relies on ACKs, not on this call, for delivery.
func (c *Conn) SendData(ctx context.Context, frame []byte) error {
	select {
	case <-c.done:
		return ErrConnClosed
	default:
	}
	select {
	case c.data <- frame:
		c.kick()
		return nil
	case <-c.done:
		return ErrConnClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close implements link.Conn: it stops accepting frames and has the writer
// send a close frame with code and reason and close the socket. It never
// blocks; Done is closed at once and Exited once the socket is closed. The
// writer first flushes the queued control frames (ACKs of messages in
// flight, an ERR that explains the close) for at most a second. Later calls
// do nothing.
func (c *Conn) Close(code int, reason string) {
	c.closeOnce.Do(func() {
		if len(reason) > maxCloseReason {
			reason = reason[:maxCloseReason]
		}
		c.closeCode, c.closeReason = code, reason
		c.closeBy = time.Now().Add(closeWait)
		close(c.done)
		// Cut short a write stuck on a peer that does not read.
		_ = c.ws.UnderlyingConn().SetWriteDeadline(time.Now().Add(closeWait))
		c.kick() // the writer sends the close frame and closes the socket
	})
}

// Done implements link.Conn: closed once Close was called or the socket
// broke.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Exited is closed when the writer goroutine has closed the socket.
func (c *Conn) Exited() <-chan struct{} { return c.exited }

// RemoteAddr implements link.Conn.
func (c *Conn) RemoteAddr() string { return c.remote }

// LocalAddr is the local network address.
func (c *Conn) LocalAddr() string { return c.local }

// Dialed implements link.Direction: true when this instance dialled the
// connection (websocket_client), false when it accepted it.
func (c *Conn) Dialed() bool { return c.dialed }

// closedLocally returns the code and reason Close was called with, once
// Done is closed (0 and "" when the socket broke, or before Close).
func (c *Conn) closedLocally() (int, string) {
	select {
	case <-c.done:
		return c.closeCode, c.closeReason
	default:
		return 0, ""
	}
}

// kick makes sure a writer goroutine runs: one is started when none does.
// Called after anything was queued for it (a frame, a ping due, Close).
func (c *Conn) kick() {
	c.wmu.Lock()
	if c.writing {
		c.wmu.Unlock()
		return
	}
	c.writing = true
	c.wmu.Unlock()
	go c.writeLoop()
}

// writeLoop is the connection's only data writer: a ping when one is due
// (so that a busy connection still pings), then control frames, then data
// frames. It returns when nothing is left to write (kick starts it again),
// or, once Close was called or a write failed, after closing the socket;
// after that no writer runs again.
func (c *Conn) writeLoop() {
	for {
		select {
		case <-c.done:
			c.finish()
			c.exit()
			return // writing stays true: no writer after this one
		default:
		}
		if c.pingDue.CompareAndSwap(true, false) {
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeWait)); err != nil {
				c.broken(err)
			}
			c.pingTime.Reset(c.hb.Interval)
			continue
		}
		if f, ok := c.popControl(); ok {
			c.writeBurst(f)
			continue
		}
		select {
		case f := <-c.data:
			c.writeBurst(f)
			continue
		default:
		}
		// Nothing to write. A frame queued after these checks is followed by
		// a kick, which waits for wmu and then finds writing false.
		c.wmu.Lock()
		if c.ctlLen.Load() == 0 && len(c.data) == 0 && !c.pingDue.Load() && !c.isDone() {
			c.writing = false
			c.wmu.Unlock()
			return
		}
		c.wmu.Unlock()
	}
}

// isDone reports whether Done is closed.
func (c *Conn) isDone() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// signalRoom wakes a reader waiting in waitRoom.
func (c *Conn) signalRoom() {
	select {
	case c.room <- struct{}{}:
	default:
	}
}

// track counts e as in flight until the pipeline is done with it.
func (c *Conn) track(e *pipeline.Envelope) {
	c.inflight.Add(1)
	e.Done = func() {
		c.inflight.Add(-1)
		c.signalRoom()
	}
}

// waitRoom blocks the reader while the connection's messages in the
// pipeline plus its queued control frames reach MaxInFlight. It returns
// false when the connection closes meanwhile.
func (c *Conn) waitRoom() bool {
	for c.inflight.Load()+c.ctlLen.Load() >= MaxInFlight {
		select {
		case <-c.room:
		case <-c.done:
			return false
		}
	}
	return true
}

// maxBurst is how many queued frames one corked write may merge.
const maxBurst = 128

// writeBurst writes f and then, while the socket is corked, every frame
// already waiting (control first), so that they leave in one write(2).
func (c *Conn) writeBurst(f []byte) {
	cc := corknet.Of(c.ws.UnderlyingConn())
	if cc == nil {
		c.write(f)
		return
	}
	cc.Cork()
	c.write(f)
burst:
	for n := 1; n < maxBurst; n++ {
		var ok bool
		if f, ok = c.popControl(); !ok {
			select {
			case f = <-c.data:
			default:
				break burst // nothing waiting
			}
		}
		c.write(f)
	}
	if err := cc.Uncork(); err != nil {
		c.broken(err)
	}
}

// write writes one text frame; a failure closes the connection. Once Close
// was called it keeps the short deadline Close set, so a frame taken from a
// queue just before still goes out (an ERR before a 1008) but cannot hold
// the writer up.
func (c *Conn) write(f []byte) {
	deadline := time.Now().Add(writeWait)
	select {
	case <-c.done:
		deadline = c.closeBy // gorilla applies it to the socket at each write
	default:
	}
	_ = c.ws.SetWriteDeadline(deadline)
	if err := c.ws.WriteMessage(websocket.TextMessage, f); err != nil {
		c.broken(err)
	}
	c.signalRoom()
}

// broken closes a connection whose socket failed (no close frame is sent).
func (c *Conn) broken(err error) {
	c.log.Debug("websocket write failed", "remote", c.remote, "err", err)
	c.Close(0, "")
}

// finish runs on the writer after Close: flush the queued control frames
// (ACKs of messages in flight, the ERR that explains a 1008) within the
// close deadline, send the close frame, close the socket.
func (c *Conn) finish() {
	defer c.ws.Close()
	code := c.closeCode
	if code == 0 {
		return
	}
	deadline := c.closeBy
	_ = c.ws.SetWriteDeadline(deadline)
	for {
		f, ok := c.popControl()
		if !ok || c.ws.WriteMessage(websocket.TextMessage, f) != nil {
			break
		}
	}
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, c.closeReason), deadline)
}

// readFrame reads the next data frame, for the source's read loop (one
// goroutine). It returns one of:
//   - frame: a text frame of at most maxFrame bytes, in a fresh slice;
//   - refusal: a bad frame the source answers with ERR, keeping the
//     connection (binary, or over maxFrame: read and discarded, never
//     buffered whole);
//   - err: the connection is unusable (closed by the remote, heartbeat
//     timeout, read limit, StopReading); the caller detaches and closes it.
func (c *Conn) readFrame(maxFrame int) (frame []byte, refusal *slipstream.Error, err error) {
	mt, r, err := c.ws.NextReader()
	if err != nil {
		return nil, nil, err
	}
	c.extendRead()
	if mt != websocket.TextMessage {
		if _, err := io.Copy(io.Discard, r); err != nil {
			return nil, nil, err
		}
		return nil, &slipstream.Error{Code: slipstream.CodeUnsupported,
			Text: "binary frames are not supported; send one JSON object per text frame"}, nil
	}
	frame, err = io.ReadAll(io.LimitReader(r, int64(maxFrame)+1))
	if err != nil {
		return nil, nil, err
	}
	if len(frame) > maxFrame {
		n, err := io.Copy(io.Discard, r)
		if err != nil {
			return nil, nil, err
		}
		c.extendRead()
		return nil, &slipstream.Error{Code: slipstream.CodeTooLarge,
			Text: fmt.Sprintf("frame of %d bytes exceeds the limit of %d bytes", int64(len(frame))+n, maxFrame)}, nil
	}
	c.extendRead()
	return frame, nil, nil
}

// closeCodeFor picks the close code for a read loop that ended with err: the
// remote's own close is echoed by gorilla already, a timeout is a missed
// heartbeat, anything else a broken socket.
func closeCodeFor(err error) (int, string) {
	var ce *websocket.CloseError
	switch {
	case errors.As(err, &ce):
		return websocket.CloseNormalClosure, ""
	case errors.Is(err, websocket.ErrReadLimit):
		return websocket.CloseMessageTooBig, "frame too large"
	case isTimeout(err):
		return websocket.CloseGoingAway, "heartbeat timeout"
	}
	return 0, ""
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}
