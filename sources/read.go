package sources

import (
	"errors"
	"time"

	"github.com/gorilla/websocket"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// This file is the read side of a connection, shared by websocket_server
// (accepted connections) and websocket_client (dialled ones).

// Why a read loop ended without a read error.
var (
	errTooManyBadFrames = errors.New("too many bad frames")
	errClosedMeanwhile  = errors.New("connection closed while waiting for the pipeline")
	errRateAbuse        = errors.New("rate limit exceeded for too long")
)

// frameID returns the messageId of a frame refused before decode, when it
// can be read ("" otherwise).
func frameID(frame []byte) string {
	m, err := slipstream.Decode(frame, nil)
	if err != nil || len(m.MessageID) > slipstream.DefaultMaxMessageID {
		return ""
	}
	return m.MessageID
}

// firstFrameFunc is offered the first text frame of a connection attached to
// l (websocket_server: a HELLO). It returns
//   - nil, nil: not for it; the frame is emitted as usual;
//   - next, nil: it consumed the frame; the loop goes on as link next;
//   - a *slipstream.Error: a refusal, answered with ERR (a bad frame);
//   - any other error: it closed c; the loop ends with that error.
type firstFrameFunc func(c *Conn, l *link.Link, frame []byte) (*link.Link, error)

// reader reads connections of one source and emits their frames.
type reader struct {
	links    *link.Registry
	maxFrame int
	emit     func(*pipeline.Envelope) bool
	first    firstFrameFunc // optional
	// current, when set, is told the link c belongs to whenever it changes.
	current func(c *Conn, l *link.Link)
	// rate, when set, limits the connection's frames (limits block).
	rate *rateLimit
	// idle, when > 0, closes a connection that sends no frame for so long.
	idle time.Duration
	// rateLimited, when set, counts each frame refused for the rate.
	rateLimited func()
}

// run reads c, attached to l, until it fails, emitting every text frame as
// an envelope of its link (Envelope.From) with c's in-flight credit
// (Conn.track / Conn.waitRoom). Bad frames are answered with ERR; more than
// maxBadFrames in a row close c with 1008.
//
// It returns the link c last belonged to and why the loop ended: nil when
// reading was stopped (shutdown, or emit refused): c stays attached so that
// ACKs of messages in flight reach the remote. Any other error means c was
// detached from its link and closed.
//
// The loop itself is kept small, and what a frame leads to is in handle:
// an idle connection's goroutine waits in the read with a small stack.
func (r *reader) run(c *Conn, l *link.Link) (*link.Link, error) {
	first, bad := true, 0
	var idle *time.Timer
	if r.idle > 0 {
		idle = time.AfterFunc(r.idle, func() { c.Close(websocket.CloseNormalClosure, "idle timeout") })
		defer idle.Stop()
	}
	for {
		if !c.waitRoom() {
			r.links.Detach(l, c)
			return l, errClosedMeanwhile
		}
		frame, refusal, err := c.readFrame(r.maxFrame)
		if err != nil {
			return r.readFailed(c, l, err)
		}
		if idle != nil {
			idle.Reset(r.idle)
		}
		var stop bool
		if l, stop, err = r.handle(c, l, frame, refusal, &first, &bad); stop {
			return l, err
		}
	}
}

// readFailed ends the read loop of c after a read error (see run).
//
//go:noinline
func (r *reader) readFailed(c *Conn, l *link.Link, err error) (*link.Link, error) {
	if c.ReadingStopped() {
		return l, nil
	}
	code, reason := closeCodeFor(err)
	r.links.Detach(l, c)
	c.Close(code, reason)
	return l, err
}

// handle deals with one frame read from c (a refusal when readFrame refused
// it), for run: it returns the link c now belongs to, and stop with run's
// result when the loop must end.
//
//go:noinline
func (r *reader) handle(c *Conn, l *link.Link, frame []byte, refusal *slipstream.Error, first *bool, bad *int) (_ *link.Link, stop bool, _ error) {
	if refusal == nil && *first {
		*first = false
		if r.first != nil {
			next, err := r.first(c, l, frame)
			switch {
			case err == nil && next != nil:
				*bad = 0
				if r.current != nil {
					r.current(c, next)
				}
				return next, false, nil
			case err != nil && !errors.As(err, &refusal):
				r.links.Detach(l, c) // the hook closed c; no-op if it moved
				return l, true, err
			}
			// A refusal is answered below and counts as a bad frame.
		}
	}
	if refusal != nil {
		if *bad++; *bad > maxBadFrames {
			r.links.Detach(l, c)
			c.Close(websocket.ClosePolicyViolation, "too many bad frames")
			return l, true, errTooManyBadFrames
		}
		c.SendControl(slipstream.Encode(refusal.Frame()))
		return l, false, nil
	}
	*bad = 0
	if r.rate != nil {
		if refused, cutOff := r.rate.take(len(frame)); refused {
			if r.rateLimited != nil {
				r.rateLimited()
			}
			if cutOff {
				r.links.Detach(l, c)
				c.Close(websocket.ClosePolicyViolation, "rate limit exceeded for too long")
				return l, true, errRateAbuse
			}
			c.SendControl(slipstream.Encode(slipstream.NewErr(frameID(frame), slipstream.CodeRateLimited,
				"rate limit exceeded: slow down and send it again")))
			return l, false, nil
		}
	}
	e := &pipeline.Envelope{Raw: frame, From: l, Received: time.Now()}
	c.track(e)
	if !r.emit(e) {
		e.Done()
		c.StopReading() // the pipeline is shutting down
		return l, true, nil
	}
	return l, false, nil
}
