package sources

import (
	"errors"
	"net/http"

	"github.com/gorilla/websocket"

	"github.com/slipstream-sync/slipstream/internal/link"
)

// This file serves one connection of the websocket_server source: upgrade,
// attach, then the read loop that emits frames.

// serveHTTP upgrades requests on the configured path; other paths get 404.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != s.cfg.Path {
		http.NotFound(w, r)
		return
	}
	if !s.acc.checkToken(r) {
		s.m.refused.WithLabelValues("token").Inc()
		s.log.Info("refused a connection without an accepted bearer token", "remote", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="slipstream"`)
		http.Error(w, "an accepted bearer token is required: send the header Authorization: Bearer <token>", http.StatusUnauthorized)
		return
	}
	if !s.acc.checkOrigin(r) {
		s.m.refused.WithLabelValues("origin").Inc()
		s.log.Info("refused a browser connection from an origin that is not allowed", "remote", r.RemoteAddr, "origin", r.Header.Get("Origin"))
		http.Error(w, "origin not allowed (see allowed_origins)", http.StatusForbidden)
		return
	}
	if status, text := s.acc.admit(r.RemoteAddr); status != 0 {
		reason := "max_connections"
		if status == http.StatusTooManyRequests {
			reason = "max_connections_per_ip"
		}
		s.m.refused.WithLabelValues(reason).Inc()
		s.log.Warn("refused a connection: limit reached", "remote", r.RemoteAddr, "limit", reason)
		w.Header().Set("Retry-After", "5")
		http.Error(w, text, status)
		return
	}
	admitted := true
	defer func() {
		if admitted {
			s.acc.release(r.RemoteAddr)
		}
	}()
	spec, err := s.specFromQuery(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var status int
	if spec, status, err = s.certSpec(r, spec); err != nil { // mutual TLS identity (certid.go)
		s.refuseCert(w, r, status, err)
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
	c := newConn(ws, false, s.cfg.Heartbeat, hardFrameFactor*int64(s.cfg.MaxFrame), s.log)
	admitted = false // released when the connection is gone
	remote := r.RemoteAddr
	c.afterExit(func() { s.acc.release(remote) })

	// The reader is counted under the set's lock: Run's stopReads, which
	// comes before its wait for the readers, then either sees this
	// connection or refuses it.
	if !s.live.add(c, func() { s.readers.Add(1) }) {
		return
	}
	s.mu.Lock()
	emit := s.emit
	s.mu.Unlock()
	l, err := s.links.Attach(spec, c)
	if err != nil {
		s.refuseAttach(c, spec.ID, err)
		s.readers.Done()
		return
	}
	s.live.setLink(c, l)
	s.log.Info("link connected", "link", l.ID(), "remote", c.RemoteAddr(), "durable", spec.Durable)
	rd := &reader{links: s.links, maxFrame: s.cfg.MaxFrame, emit: emit, current: s.live.setLink,
		rate: newRateLimit(s.cfg.Limits), idle: s.cfg.Limits.IdleTimeout, rateLimited: s.m.rateLimited.Inc,
		first: func(c *Conn, cur *link.Link, frame []byte) (*link.Link, error) {
			m := s.helloFrame(frame)
			if m == nil {
				return nil, nil
			}
			next, nextSpec, err := s.hello(c, cur, spec, m)
			if err == nil {
				spec = nextSpec
			}
			return next, err
		}}
	// Read on a goroutine of its own and return: net/http then lets go of
	// what it holds for the request (its 4 KiB write buffer, the request,
	// this handler's deep stack), which an idle connection would otherwise
	// keep for as long as it stays open.
	go s.readConn(rd, c, l)
}

// readConn runs the read loop of an attached connection until it ends
// (readers counts it). Its goroutine starts with nothing deeper than the
// loop, so that the stack of an idle connection stays small.
func (s *Server) readConn(rd *reader, c *Conn, l *link.Link) {
	defer s.readers.Done()
	l, err := rd.run(c, l)
	s.readEnded(c, l, err)
}

// readEnded logs why the read loop of c, last attached to l, ended.
func (s *Server) readEnded(c *Conn, l *link.Link, err error) {
	switch {
	case err == nil, errors.Is(err, link.ErrDuplicate):
	case errors.Is(err, errRateAbuse):
		s.m.rateClosed.Inc()
		s.log.Warn("closed a link that exceeded its rate limit for too long", "link", l.ID(), "remote", c.RemoteAddr())
	case errors.Is(err, errTooManyBadFrames):
		s.log.Warn("closed a link that sent too many bad frames", "link", l.ID(), "remote", c.RemoteAddr())
	default:
		s.log.Info("link disconnected", "link", l.ID(), "remote", c.RemoteAddr(), "reason", err)
	}
}

// refuseAttach closes c, whose link id could not be attached: a peer
// connection that lost the tie-break (link.ErrDuplicate) with 1000, else
// with 1001 at shutdown or 1011.
func (s *Server) refuseAttach(c *Conn, id string, err error) {
	switch {
	case errors.Is(err, link.ErrDuplicate):
		s.log.Info("refused a duplicate peer connection; the other connection of the link stays",
			"link", id, "remote", c.RemoteAddr())
		c.Close(websocket.CloseNormalClosure, link.DuplicateReason)
	case errors.Is(err, link.ErrClosed):
		c.Close(websocket.CloseGoingAway, "instance shutting down")
	default:
		s.log.Warn("cannot attach an inbound connection", "link", id, "remote", c.RemoteAddr(), "err", err)
		c.Close(websocket.CloseInternalServerErr, "cannot attach the link")
	}
}
