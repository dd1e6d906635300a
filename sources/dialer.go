package sources

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/corknet"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// This file is the dialler of one peer of the websocket_client source: the
// redial loop, the WebSocket and HELLO handshake, and the connection's life.

// dialTimeout bounds the TCP, TLS and WebSocket handshakes of one dial.
const dialTimeout = 10 * time.Second

// errRemoteDuplicate: the peer closed our connection during the HELLO
// exchange because it keeps the other connection of the link.
var errRemoteDuplicate = errors.New("the peer keeps its own connection (" + link.DuplicateReason + ")")

// wrongPeerError: the peer's HELLO names another instance than configured.
type wrongPeerError struct{ want, got string }

func (e *wrongPeerError) Error() string {
	return fmt.Sprintf("the peer introduced itself as %q, but this peer block is %q", e.got, e.want)
}

// peer dials one configured peer and serves its connections.
type peer struct {
	cl     *Client
	cfg    PeerConfig
	spec   link.Spec
	link   *link.Link
	url    string
	logURL string // without credentials
	header http.Header
	dialer *websocket.Dialer
	tls    *tlsFiles // wss://: the files of the tls block, re-read when they change
	bo     *backoff
	log    *slog.Logger

	ok, failed, duplicate, timeouts prometheus.Counter

	mu      sync.Mutex
	state   string
	lastErr string // why the last connection attempt or connection ended
}

// newPeer loads pc's TLS files and declares its link.
func newPeer(c *Client, pc PeerConfig) (*peer, error) {
	if pc.ID == c.self.ID {
		return nil, errors.New("is this instance's own id")
	}
	u, err := url.Parse(pc.URL)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	log := c.log.With("peer", pc.ID)
	dialer := &websocket.Dialer{
		Proxy:            http.ProxyFromEnvironment,
		NetDialContext:   corknet.Dial,
		HandshakeTimeout: dialTimeout,
		ReadBufferSize:   4096,
		WriteBufferSize:  4096,
	}
	var tf *tlsFiles
	if u.Scheme == "wss" {
		if tf, err = newPeerTLS(c, pc); err != nil {
			return nil, err
		}
		if pc.TLS != nil && pc.TLS.InsecureSkipVerify {
			log.Warn("INSECURE: TLS certificate verification is disabled for this peer (tls.insecure_skip_verify = true); " +
				"anyone on the network path can impersonate it and read the link. Use ca_file instead.")
		}
	}
	header := http.Header{}
	if pc.Token != "" {
		header.Set("Authorization", "Bearer "+pc.Token)
	}
	p := &peer{
		cl:        c,
		cfg:       pc,
		url:       pc.URL,
		logURL:    u.Redacted(),
		header:    header,
		dialer:    dialer,
		tls:       tf,
		bo:        newBackoff(c.cfg.Retry),
		log:       log,
		ok:        c.m.connects.WithLabelValues(pc.ID, outcomeOK),
		failed:    c.m.connects.WithLabelValues(pc.ID, outcomeError),
		duplicate: c.m.connects.WithLabelValues(pc.ID, outcomeDuplicate),
		timeouts:  c.m.timeouts.WithLabelValues(pc.ID),
		state:     PeerIdle,
		spec: link.Spec{ID: pc.ID, Tags: pc.Tags, Peer: true, Acks: true, Durable: true,
			Commands: pc.AllowCommands, Perms: pc.Permissions.perms(), Configured: true},
	}
	if p.link, err = c.links.Ensure(p.spec); err != nil {
		return nil, fmt.Errorf("declare the link: %w", err)
	}
	return p, nil
}

// State is the dialler's state (see Client.PeerState).
func (p *peer) State() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

func (p *peer) setState(s string) {
	p.mu.Lock()
	p.state = s
	p.mu.Unlock()
}

// stableAfter is how long a connection must stay up for its end to reset
// the count of consecutive failures.
func (p *peer) stableAfter() time.Duration { return p.cl.cfg.Retry.MaxInterval }

// run is the dialler: dial, serve the connection until it ends, wait, and
// again, until ctx is done. While the link is up on a connection the peer
// dialled and the peer's id sorts lower than ours, that connection would win
// the tie-break against ours: the dialler does not dial and waits for it to
// end instead. When our id sorts lower it dials anyway, and its connection
// replaces the peer's (so that both ends settle on the same connection
// whatever the order of events).
func (p *peer) run(ctx context.Context, emit func(*pipeline.Envelope) bool) {
	defer p.setState(PeerStopped)
	failures := 0
	for ctx.Err() == nil {
		if other := p.link.Conn(); other != nil && p.yieldsTo(other) {
			p.setState(PeerConnected)
			p.log.Debug("the link is up on the peer's connection; not dialling", "remote", other.RemoteAddr())
			select {
			case <-other.Done():
			case <-ctx.Done():
				return
			}
			failures = 0
			if !p.sleep(ctx, p.bo.delay(0), PeerBackoff) {
				return
			}
			continue
		}

		end := p.session(ctx, emit, failures+1)
		if ctx.Err() != nil {
			return
		}
		if end.stopped { // the pipeline is shutting down
			<-ctx.Done()
			return
		}
		var (
			wait  time.Duration
			state = PeerBackoff
		)
		if end.err != nil && !end.duplicate {
			p.mu.Lock()
			p.lastErr = end.err.Error()
			p.mu.Unlock()
		}
		switch {
		case end.duplicate:
			wait = p.bo.delay(0)
			p.log.Info("peer connection closed: the link is served by the peer's own connection",
				"reason", end.err, "check_in", wait)
		case end.attached && end.up >= p.stableAfter():
			failures = 0
			wait = p.bo.delay(0)
			p.log.Info("peer disconnected", "reason", end.err, "up", end.up.Round(time.Millisecond), "retry_in", wait)
		default:
			failures++
			cooldown := false
			wait, cooldown = p.bo.next(failures)
			var wrong *wrongPeerError
			switch {
			case cooldown:
				state = PeerCooldown
				p.log.Warn("peer unreachable; cooling down before trying again", "attempts", failures,
					"err", end.err, "cooldown", wait)
				failures = 0
			case errors.As(end.err, &wrong):
				p.log.Error("wrong instance at the peer's URL; retrying", "want", wrong.want, "got", wrong.got,
					"url", p.logURL, "retry_in", wait)
			case end.attached:
				p.log.Info("peer disconnected", "reason", end.err, "up", end.up.Round(time.Millisecond), "retry_in", wait)
			case failures == 1:
				p.log.Info("cannot connect to peer; retrying", "url", p.logURL, "err", end.err, "retry_in", wait)
			default:
				p.log.Debug("dial failed", "attempt", failures, "err", end.err, "retry_in", wait)
			}
		}
		if !p.sleep(ctx, wait, state) {
			return
		}
	}
}

// yieldsTo reports whether other, the link's live connection, wins the
// tie-break against a connection we would dial: the peer dialled it and
// its id sorts lower than ours.
func (p *peer) yieldsTo(other link.Conn) bool {
	if d, ok := other.(link.Direction); ok && d.Dialed() {
		return false
	}
	return p.cfg.ID < p.cl.self.ID
}

// sleep waits d in state; false when ctx is done first.
func (p *peer) sleep(ctx context.Context, d time.Duration, state string) bool {
	p.setState(state)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// sessionEnd is how one session (one dial) ended.
type sessionEnd struct {
	attached  bool          // the connection served the link
	up        time.Duration // for how long
	duplicate bool          // it lost the tie-break (not a failure)
	stopped   bool          // reading stopped at shutdown: it stays attached
	err       error
}

// session dials once and serves the connection until it ends.
func (p *peer) session(ctx context.Context, emit func(*pipeline.Envelope) bool, attempt int) sessionEnd {
	p.setState(PeerConnecting)
	p.log.Debug("dialling peer", "url", p.logURL, "attempt", attempt)
	ws, err := p.handshake(ctx)
	if err != nil {
		if errors.Is(err, errRemoteDuplicate) {
			p.duplicate.Inc()
			return sessionEnd{duplicate: true, err: err}
		}
		if ctx.Err() == nil {
			p.failed.Inc()
		}
		return sessionEnd{err: err}
	}
	cn := newConn(ws, true, p.cl.cfg.Heartbeat, hardFrameFactor*int64(DefaultMaxFrame), p.log)
	if !p.cl.live.add(cn, nil) {
		return sessionEnd{stopped: true}
	}
	l, err := p.cl.links.AttachWith(p.spec, cn, func() { p.setState(PeerConnected) })
	switch {
	case errors.Is(err, link.ErrDuplicate):
		cn.Close(websocket.CloseNormalClosure, link.DuplicateReason)
		p.duplicate.Inc()
		return sessionEnd{duplicate: true, err: err}
	case errors.Is(err, link.ErrClosed):
		cn.Close(websocket.CloseGoingAway, "instance shutting down")
		return sessionEnd{stopped: true}
	case err != nil:
		cn.Close(websocket.CloseInternalServerErr, "cannot attach the link")
		p.failed.Inc()
		return sessionEnd{err: fmt.Errorf("attach: %w", err)}
	}
	p.ok.Inc()
	p.cl.live.setLink(cn, l)
	start := time.Now()
	p.log.Info("peer connected", "url", p.logURL, "remote", cn.RemoteAddr(), "attempt", attempt)

	rd := &reader{links: p.cl.links, maxFrame: DefaultMaxFrame, emit: emit}
	_, err = rd.run(cn, l)
	end := sessionEnd{attached: true, up: time.Since(start), err: err}
	switch {
	case err == nil:
		end.stopped = true
	case isTimeout(err):
		p.timeouts.Inc()
		end.err = fmt.Errorf("heartbeat timeout: nothing heard for %s", p.cl.cfg.Heartbeat.Timeout)
	case lostTieBreak(cn, err):
		end.duplicate = true
	}
	return end
}

// lostTieBreak reports whether cn ended because the other connection of
// its link won the tie-break, on this side or on the peer's.
func lostTieBreak(cn *Conn, err error) bool {
	if _, reason := cn.closedLocally(); reason == link.DuplicateReason {
		return true
	}
	var ce *websocket.CloseError
	return errors.As(err, &ce) && ce.Text == link.DuplicateReason
}

// handshake dials the peer, sends our HELLO and checks the peer's answer.
// It returns the connection ready for newConn.
func (p *peer) handshake(ctx context.Context) (*websocket.Conn, error) {
	if p.tls != nil { // the current CAs and client certificate
		p.dialer.TLSClientConfig = p.tls.clientConfig(p.cfg.TLS)
	}
	ws, resp, err := p.dialer.DialContext(ctx, p.url, p.header)
	if err != nil {
		if resp != nil {
			_ = resp.Body.Close()
			return nil, fmt.Errorf("dial: %w (HTTP %s)", err, resp.Status)
		}
		return nil, fmt.Errorf("dial: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = ws.Close() })
	fail := func(err error) (*websocket.Conn, error) {
		stop()
		_ = ws.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	ws.SetReadLimit(hardFrameFactor * int64(DefaultMaxFrame))
	deadline := time.Now().Add(p.cl.cfg.Heartbeat.Timeout)
	_ = ws.SetWriteDeadline(deadline)
	if err := ws.WriteMessage(websocket.TextMessage, ourHello(p.cl.self)); err != nil {
		return fail(fmt.Errorf("send HELLO: %w", err))
	}
	_ = ws.SetReadDeadline(deadline)
	mt, frame, err := ws.ReadMessage()
	if err != nil {
		var ce *websocket.CloseError
		if errors.As(err, &ce) && ce.Text == link.DuplicateReason {
			return fail(errRemoteDuplicate)
		}
		return fail(fmt.Errorf("waiting for the peer's HELLO: %w", err))
	}
	if err := p.checkHello(mt, frame); err != nil {
		return fail(err)
	}
	if !stop() { // ctx was cancelled meanwhile: ws is closed
		return nil, ctx.Err()
	}
	_ = ws.SetWriteDeadline(time.Time{})
	return ws, nil
}

// checkHello checks that the peer's first frame is a HELLO of protocol 1
// from the configured instance.
func (p *peer) checkHello(mt int, frame []byte) error {
	if mt != websocket.TextMessage {
		return errors.New("the peer answered HELLO with a binary frame")
	}
	m, err := slipstream.Decode(frame, &slipstream.Limits{MaxFrame: DefaultMaxFrame})
	if err != nil {
		return fmt.Errorf("the peer's answer to HELLO does not decode: %w", err)
	}
	switch {
	case m.Type == slipstream.TypeERR:
		return fmt.Errorf("the peer refused our HELLO: %s: %s", m.Code, m.Error)
	case m.Type != slipstream.TypeHELLO:
		return fmt.Errorf("the peer answered HELLO with a %s frame", m.Type)
	case m.Protocol > slipstream.ProtocolVersion:
		return fmt.Errorf("the peer speaks protocol %d; this instance speaks %d", m.Protocol, slipstream.ProtocolVersion)
	case m.InstanceID != p.cfg.ID:
		return &wrongPeerError{want: p.cfg.ID, got: m.InstanceID}
	}
	return nil
}
