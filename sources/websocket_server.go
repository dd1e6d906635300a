package sources

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"

	"github.com/gorilla/websocket"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/corknet"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// Defaults and limits of the websocket_server source.
const (
	DefaultListen   = "127.0.0.1:7070"
	DefaultPath     = "/ws"
	DefaultMaxFrame = slipstream.DefaultMaxFrame
	// hardFrameFactor x max_frame is gorilla's read limit: a frame beyond it
	// is not worth discarding and closes the connection with 1009.
	hardFrameFactor = 16
	// maxBadFrames is how many bad frames in a row (binary, too large, bad
	// HELLO) a connection may send; one more closes it with 1008.
	maxBadFrames = 100
)

// ServerConfig is the body of a `source "websocket_server"` block.
type ServerConfig struct {
	Listen        string          `hcl:"listen,optional" doc:"address to listen on, host:port (port 0 picks a free one)"`
	Path          string          `hcl:"path,optional" doc:"URL path of the WebSocket endpoint; other paths answer 404"`
	DefaultTags   []string        `hcl:"default_tags,optional" doc:"tags of inbound links that declare none (HELLO or ?tags=)"`
	AllowCommands bool            `hcl:"allow_commands,optional" doc:"links of this listener may issue slipstream.* commands"`
	Acks          bool            `hcl:"acks,optional" doc:"clients are expected to ACK deliveries unless they opt out (HELLO acks=false or ?acks=false)"`
	MaxFrame      int             `hcl:"max_frame,optional" doc:"largest text frame accepted, in bytes; larger ones are answered with ERR too_large"`
	Heartbeat     HeartbeatConfig `hcl:"heartbeat,block" doc:"ping interval and silence timeout"`

	Tokens         []string             `hcl:"tokens,optional" doc:"bearer tokens accepted (Authorization: Bearer <token>, or ?token= for browsers); when set (or token_file), connections without an accepted token are refused with HTTP 401. Never logged"`
	TokenFile      string               `hcl:"token_file,optional" doc:"file of accepted bearer tokens, one per line (# comments); re-read when it changes, so tokens rotate without a restart"`
	AllowedOrigins []string             `hcl:"allowed_origins,optional" doc:"Origin header values accepted from browsers (\"*\": any); empty: a browser's Origin must match the Host it connects to. Requests without Origin (not browsers) always pass"`
	Limits         LimitsConfig         `hcl:"limits,block" doc:"connection counts, per-connection rates, handshake and idle timeouts"`
	Permissions    PermissionsConfig    `hcl:"permissions,block" doc:"what the links of this listener may send (default: everything; slipstream.* commands need allow_commands)"`
	Permission     []PermissionOverride `hcl:"permission,block" doc:"the whole set of permissions of one link, by its id (replaces permissions and allow_commands for it)"`
	TLS            *ServerTLS           `hcl:"tls,block" doc:"serve wss:// (TLS 1.2 at least); with client_ca_file, mutual TLS; see docs/tls.md"`
	InboundPeers   []InboundPeer        `hcl:"inbound_peer,block" doc:"a peer instance that dials this listener (it has a websocket_client peer block naming this instance; this one does not dial it): its link is durable from the first start, so that what is published before it ever connects waits in its outbox. Without it, an instance learns of such a peer at its first HELLO"`
}

// InboundPeer is an `inbound_peer "ID"` block of websocket_server.
type InboundPeer struct {
	ID   string   `hcl:"id,label"`
	Tags []string `hcl:"tags,optional" doc:"tags of its link until it first connects, and whenever it announces none (its HELLO's tags, or ?tags= on a connection without HELLO); once it has connected, the link keeps the tags it last announced, across restarts too"`
}

// inboundTags returns the declared tags of inbound peer id, and whether id
// is declared.
func (c *ServerConfig) inboundTags(id string) ([]string, bool) {
	for _, p := range c.InboundPeers {
		if p.ID == id {
			return p.Tags, true
		}
	}
	return nil, false
}

// Validate implements pipeline.Validator (the heartbeat block validates
// itself).
func (c *ServerConfig) Validate() error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return &pipeline.FieldError{Field: "listen", Err: fmt.Errorf("want host:port: %w", err)}
	}
	if len(c.Path) == 0 || c.Path[0] != '/' {
		return &pipeline.FieldError{Field: "path", Err: errors.New(`must start with "/"`)}
	}
	if err := checkTags(c.DefaultTags); err != nil {
		return &pipeline.FieldError{Field: "default_tags", Err: err}
	}
	if c.MaxFrame <= 0 {
		return &pipeline.FieldError{Field: "max_frame", Err: errors.New("must be greater than 0")}
	}
	seen := map[string]bool{}
	for _, o := range c.Permission {
		if seen[o.ID] {
			return &pipeline.FieldError{Field: "permission", Err: fmt.Errorf("link %q has two permission blocks", o.ID)}
		}
		seen[o.ID] = true
	}
	clear(seen)
	for i, p := range c.InboundPeers {
		if err := checkLinkID(p.ID); err != nil {
			return &pipeline.FieldError{Field: fmt.Sprintf("inbound_peer[%d].id", i), Err: err}
		}
		if seen[p.ID] {
			return &pipeline.FieldError{Field: "inbound_peer", Err: fmt.Errorf("peer %q is declared twice", p.ID)}
		}
		seen[p.ID] = true
		if err := checkTags(p.Tags); err != nil {
			return &pipeline.FieldError{Field: fmt.Sprintf("inbound_peer[%d].tags", i), Err: err}
		}
	}
	return nil
}

// spec returns the access part of the spec of link id: its permissions and
// whether it may issue commands (a permission block for id, else the
// listener's permissions and allow_commands).
func (c *ServerConfig) access(id string) (perms *link.Permissions, commands bool) {
	for i := range c.Permission {
		if o := &c.Permission[i]; o.ID == id {
			return o.block().perms(), o.Commands
		}
	}
	return c.Permissions.perms(), c.AllowCommands
}

func init() {
	pipeline.Register(pipeline.Kind{
		Class: pipeline.ClassSource,
		Name:  "websocket_server",
		Summary: "Accepts WebSocket connections from clients and peers, attaches each to its link (HELLO, ?id=&tags=, or a " +
			"generated con-... id with default_tags), answers HELLO, pings every heartbeat interval, and emits every text " +
			"frame into the pipeline. Binary and oversized frames are answered with ERR and the connection stays open.",
		Example: `source "websocket_server" "ingress" {
  listen       = "127.0.0.1:7070"
  path         = "/ws"
  default_tags = ["local"]
  heartbeat {
    interval = "10s"
    timeout  = "30s"
  }
}
`,
		NewConfig: func() any {
			return &ServerConfig{Listen: DefaultListen, Path: DefaultPath, Acks: true,
				MaxFrame: DefaultMaxFrame, Heartbeat: DefaultHeartbeat(), Limits: DefaultLimits()}
		},
		Build: func(cfg any, bc *pipeline.BuildContext) (any, error) {
			return NewServer(*cfg.(*ServerConfig), bc)
		},
	})
}

// writeBuffers are the write buffers of every connection of the websocket
// sources: gorilla takes one for each frame it writes and gives it back once
// the frame is written.
var writeBuffers websocket.BufferPool = &sync.Pool{}

// Server is the websocket_server source. Its methods are safe for
// concurrent use.
type Server struct {
	cfg      ServerConfig
	self     pipeline.Instance
	links    *link.Registry
	log      *slog.Logger
	upgrader websocket.Upgrader
	acc      *access
	m        *serverMetrics
	tls      *tlsFiles     // nil: plain ws://
	certID   *certIdentity // nil: link ids do not come from certificates

	listenMu sync.Mutex
	ln       net.Listener

	mu      sync.Mutex
	emit    func(*pipeline.Envelope) bool
	live    liveConns      // live connections and their current link
	readers sync.WaitGroup // read loops

	closeOnce sync.Once
	closed    chan struct{}
}

var (
	_ pipeline.Source  = (*Server)(nil)
	_ pipeline.Starter = (*Server)(nil)
	_ pipeline.Closer  = (*Server)(nil)
	_ pipeline.Readier = (*Server)(nil)
	_ pipeline.Origin  = (*link.Link)(nil)
)

// NewServer builds a websocket_server source from its config (what the
// kind's Build does). It does not listen yet: see Start.
func NewServer(cfg ServerConfig, bc *pipeline.BuildContext) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.Heartbeat.Validate(); err != nil {
		return nil, fmt.Errorf("heartbeat.%w", err)
	}
	if err := cfg.Limits.Validate(); err != nil {
		return nil, fmt.Errorf("limits.%w", err)
	}
	if err := cfg.Permissions.Validate(); err != nil {
		return nil, fmt.Errorf("permissions.%w", err)
	}
	for i := range cfg.Permission {
		if err := cfg.Permission[i].Validate(); err != nil {
			return nil, fmt.Errorf("permission %q: %w", cfg.Permission[i].ID, err)
		}
	}
	acc, err := newAccess(&cfg)
	if err != nil {
		return nil, err
	}
	m, err := newServerMetrics(bc.Metrics)
	if err != nil {
		return nil, err
	}
	if bc.Links == nil {
		return nil, errors.New("websocket_server needs the link registry")
	}
	log := bc.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if acc.requiresToken() && len(cfg.Tokens) == 0 {
		log.Info("bearer tokens required", "token_file", cfg.TokenFile)
	}
	if err := declareInboundPeers(cfg.InboundPeers, bc); err != nil {
		return nil, err
	}
	tf, err := newServerTLS(cfg.TLS, bc, log)
	if err != nil {
		return nil, err
	}
	return &Server{
		tls:    tf,
		certID: newCertIdentity(cfg.TLS),
		cfg:    cfg,
		self:   bc.Instance,
		links:  bc.Links,
		log:    log,
		acc:    acc,
		m:      m,
		upgrader: websocket.Upgrader{
			HandshakeTimeout: cfg.Limits.HandshakeTimeout,
			// 0: gorilla reads through net/http's 4 KiB buffer of the
			// hijacked connection rather than allocating another.
			ReadBufferSize: 1024,
			// Writes take a buffer from the pool for one frame: an idle
			// connection holds none.
			WriteBufferSize: 4096,
			WriteBufferPool: writeBuffers,
			CheckOrigin:     acc.checkOrigin,
		},
		closed: make(chan struct{}),
	}, nil
}

// declareInboundPeers makes each declared inbound peer a durable link (a
// recipient) that cannot be forgotten while declared. One the instance
// knows already keeps the tags it last announced until it connects again.
func declareInboundPeers(peers []InboundPeer, bc *pipeline.BuildContext) error {
	for _, p := range peers {
		if p.ID == bc.Instance.ID {
			return fmt.Errorf("inbound_peer %q is this instance's own id", p.ID)
		}
		spec := link.Spec{ID: p.ID, Tags: p.Tags, Peer: true, Acks: true, Declared: true}
		if l := bc.Links.Get(p.ID); l != nil {
			// As it last announced (and, were it connected, as it is).
			spec.Tags, spec.Acks, spec.Peer = l.Tags(), l.Acks(), l.IsPeer()
			spec.Commands, spec.Perms = l.AllowCommands(), l.Permissions()
		}
		if _, err := bc.Links.Ensure(spec); err != nil {
			return fmt.Errorf("inbound_peer %q: declare the link: %w", p.ID, err)
		}
	}
	return nil
}

// AllowCommands reports the listener's allow_commands; it is also set on
// every link this source attaches (link.Link.AllowCommands).
func (s *Server) AllowCommands() bool { return s.cfg.AllowCommands }

// Start implements pipeline.Starter: it binds the listener, so that Addr is
// known (and a busy port reported) before any source runs. Connections wait
// in the kernel's backlog until Run serves them. Called once by the runner.
func (s *Server) Start(context.Context) error {
	_, err := s.listen()
	return err
}

// listen binds the listener once; later calls return it.
func (s *Server) listen() (net.Listener, error) {
	s.listenMu.Lock()
	defer s.listenMu.Unlock()
	if s.ln != nil {
		return s.ln, nil
	}
	select {
	case <-s.closed:
		return nil, errors.New("websocket_server: closed")
	default:
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("websocket_server: %w", err)
	}
	s.ln = ln
	if s.tls != nil {
		s.tls.start() // watch the certificate files while listening
	}
	s.log.Info("listening for WebSocket connections", "addr", ln.Addr().String(), "path", s.cfg.Path)
	return ln, nil
}

// Addr is the listening address, nil before Start (or Run).
func (s *Server) Addr() net.Addr {
	s.listenMu.Lock()
	defer s.listenMu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Ready implements pipeline.Readier for /readyz: nil while the listener is
// bound and the source is not closed.
func (s *Server) Ready() error {
	select {
	case <-s.closed:
		return errors.New("websocket_server: closed")
	default:
	}
	if s.Addr() == nil {
		return errors.New("websocket_server: not listening yet")
	}
	return nil
}

// Run implements pipeline.Source: it serves WebSocket connections and emits
// their frames until ctx is cancelled (or Close is called). It then stops
// accepting, stops reading every connection (writes go on, so ACKs of
// messages in flight reach their senders), waits for the read loops and
// returns nil. An error means the listener failed (fatal for the instance).
// Called once, by the runner.
func (s *Server) Run(ctx context.Context, emit func(*pipeline.Envelope) bool) error {
	ln, err := s.listen()
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.emit = emit
	s.mu.Unlock()
	srv := &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTP),
		ReadHeaderTimeout: s.cfg.Limits.HandshakeTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	served := make(chan error, 1)
	var sl net.Listener = corknet.Listener{Listener: ln} // under TLS: net/http needs the *tls.Conn; TLS links are not corked
	if s.tls != nil {
		sl = tls.NewListener(sl, s.tls.serverConfig(s.tlsMinVersion()))
	}
	go func() { served <- srv.Serve(sl) }()

	var runErr error
	select {
	case <-ctx.Done():
	case <-s.closed:
	case runErr = <-served:
		runErr = fmt.Errorf("websocket_server %s: %w", ln.Addr(), runErr)
	}
	_ = srv.Close() // stops accepting; upgraded connections are not its own
	if runErr == nil {
		<-served
	}
	s.live.stopReads()
	s.readers.Wait()
	return runErr
}

// Close implements pipeline.Closer: it closes the listener and every
// connection left (1001, detached from its link first) and waits for their
// writers. Called by the runner after Run returned; safe to call again, or
// early (Run then returns).
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		if s.tls != nil {
			s.tls.close()
		}
		s.listenMu.Lock()
		if s.ln != nil {
			_ = s.ln.Close()
		}
		s.listenMu.Unlock()
		s.live.closeAll(s.links)
	})
	return nil
}
