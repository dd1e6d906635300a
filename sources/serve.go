package sources

import (
	"errors"
	"net/http"
	"time"

	"github.com/gorilla/websocket"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// This file serves one connection of the websocket_server source: upgrade,
// attach, then the read loop that emits frames.

// serveHTTP upgrades requests on the configured path; other paths get 404.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != s.cfg.Path {
		http.NotFound(w, r)
		return
	}
	spec, err := s.specFromQuery(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if spec.Durable {
		// Make the link a recipient before the client can learn it is
		// connected: what is published from then on reaches it.
		if _, err := s.links.Ensure(spec); err != nil {
			http.Error(w, "cannot attach the link", http.StatusServiceUnavailable)
			return
		}
	}
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		s.log.Debug("websocket upgrade failed", "remote", r.RemoteAddr, "err", err)
		return // the upgrader answered the request
	}
	c := newConn(ws, s.cfg.Heartbeat, hardFrameFactor*int64(s.cfg.MaxFrame), s.log)

	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		c.Close(websocket.CloseGoingAway, "instance shutting down")
		return
	}
	s.conns[c] = nil
	s.readers.Add(1)
	emit := s.emit
	s.mu.Unlock()
	go func() { // forget the connection once its writer is done
		<-c.Exited()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	defer s.readers.Done()

	l, err := s.links.Attach(spec, c)
	if err != nil {
		s.log.Warn("cannot attach an inbound connection", "link", spec.ID, "remote", c.RemoteAddr(), "err", err)
		c.Close(websocket.CloseInternalServerErr, "cannot attach the link")
		return
	}
	s.setLink(c, l)
	s.log.Info("link connected", "link", l.ID(), "remote", c.RemoteAddr(), "durable", spec.Durable)
	s.readLoop(c, l, spec, emit)
}

// setLink records c's current link (for Close).
func (s *Server) setLink(c *Conn, l *link.Link) {
	s.mu.Lock()
	if _, ok := s.conns[c]; ok {
		s.conns[c] = l
	}
	s.mu.Unlock()
}

// readLoop reads c until it fails, emitting frames as envelopes of link l
// (which a first-frame HELLO may change). A read that fails because reading
// was stopped (shutdown, or emit returned false) leaves c attached for its
// writes; any other failure detaches and closes it.
func (s *Server) readLoop(c *Conn, l *link.Link, spec link.Spec, emit func(*pipeline.Envelope) bool) {
	first, bad := true, 0
	for {
		if !c.waitRoom() {
			s.links.Detach(l, c)
			return
		}
		frame, refusal, err := c.readFrame(s.cfg.MaxFrame)
		if err != nil {
			if c.ReadingStopped() {
				return
			}
			code, reason := closeCodeFor(err)
			s.log.Info("link disconnected", "link", l.ID(), "remote", c.RemoteAddr(), "reason", err)
			s.links.Detach(l, c)
			c.Close(code, reason)
			return
		}
		if refusal == nil && first {
			first = false
			if m := s.helloFrame(frame); m != nil {
				next, nextSpec, err := s.hello(c, l, spec, m)
				switch {
				case err == nil:
					l, spec, bad = next, nextSpec, 0
					s.setLink(c, l)
					continue
				case !errors.As(err, &refusal):
					return // hello closed c
				}
				// A bad HELLO is answered below and counts as a bad frame.
			}
		}
		if refusal != nil {
			if bad++; bad > maxBadFrames {
				s.log.Warn("closing a link that sent too many bad frames", "link", l.ID(), "remote", c.RemoteAddr())
				s.links.Detach(l, c)
				c.Close(websocket.ClosePolicyViolation, "too many bad frames")
				return
			}
			c.SendControl(slipstream.Encode(refusal.Frame()))
			continue
		}
		bad = 0
		e := &pipeline.Envelope{Raw: frame, From: l, Received: time.Now()}
		c.track(e)
		if !emit(e) {
			e.Done()
			c.StopReading() // the pipeline is shutting down
			return
		}
	}
}
