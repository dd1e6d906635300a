package sources

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/telemetry"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// PeerConfig is one `peer "ID"` block of the websocket_client source.
type PeerConfig struct {
	ID            string            `hcl:"id,label"`
	URL           string            `hcl:"url" doc:"ws:// or wss:// URL of the peer's websocket_server, path included (\"wss://azure.example.com:7070/ws\")"`
	Tags          []string          `hcl:"tags,optional" doc:"tags of the link to this peer: messages targeted at one of them are routed to it"`
	Token         string            `hcl:"token,optional" doc:"sent as Authorization: Bearer <token> when dialling; never logged"`
	AllowCommands bool              `hcl:"allow_commands,optional" doc:"the peer may issue slipstream.* commands to this instance"`
	TLS           *PeerTLS          `hcl:"tls,block" doc:"TLS settings for a wss:// URL"`
	Permissions   PermissionsConfig `hcl:"permissions,block" doc:"what the peer may send to this instance (default: everything; slipstream.* commands need allow_commands)"`
}

// Validate implements pipeline.Validator; field names are relative to the
// peer block.
func (p *PeerConfig) Validate() error {
	if err := checkLinkID(p.ID); err != nil {
		return &pipeline.FieldError{Field: "id", Err: fmt.Errorf("peer id %w", err)}
	}
	u, err := url.Parse(p.URL)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return &pipeline.FieldError{Field: "url", Err: fmt.Errorf("must be a ws:// or wss:// URL with a host, got %q", p.URL)}
	}
	if p.TLS != nil && u.Scheme != "wss" {
		return &pipeline.FieldError{Field: "tls", Err: errors.New("a tls block needs a wss:// url")}
	}
	if err := checkTags(p.Tags); err != nil {
		return &pipeline.FieldError{Field: "tags", Err: err}
	}
	if p.TLS != nil {
		if err := p.TLS.Validate(); err != nil {
			return prefixField("tls", err)
		}
	}
	return nil
}

// ClientConfig is the body of a `source "websocket_client"` block.
type ClientConfig struct {
	Peers     []PeerConfig    `hcl:"peer,block" doc:"a peer instance to dial; the label is its instance id, which its HELLO must carry"`
	Retry     RetryConfig     `hcl:"retry,block" doc:"redial policy"`
	Heartbeat HeartbeatConfig `hcl:"heartbeat,block" doc:"ping interval and silence timeout of the peer connections"`
}

// Validate implements pipeline.Validator. The loader validates the nested
// blocks itself; Validate checks them too (for configs built in code) and
// that peer ids are unique.
func (c *ClientConfig) Validate() error {
	seen := map[string]bool{}
	for i := range c.Peers {
		p := &c.Peers[i]
		if err := p.Validate(); err != nil {
			return prefixField(fmt.Sprintf("peer[%d]", i), err)
		}
		if seen[p.ID] {
			return &pipeline.FieldError{Field: fmt.Sprintf("peer[%d]", i), Err: fmt.Errorf("peer %q is declared twice", p.ID)}
		}
		seen[p.ID] = true
	}
	if err := c.Retry.Validate(); err != nil {
		return prefixField("retry", err)
	}
	if err := c.Heartbeat.Validate(); err != nil {
		return prefixField("heartbeat", err)
	}
	return nil
}

// prefixField makes a nested block's FieldError a path from its parent.
func prefixField(block string, err error) error {
	var fe *pipeline.FieldError
	if errors.As(err, &fe) {
		return &pipeline.FieldError{Field: block + "." + fe.Field, Err: fe.Err}
	}
	return fmt.Errorf("%s: %w", block, err)
}

func init() {
	pipeline.Register(pipeline.Kind{
		Class: pipeline.ClassSource,
		Name:  "websocket_client",
		Summary: "Dials peer instances and keeps one link per peer up: sends our HELLO, requires the peer's HELLO to carry " +
			"the configured id, then reads the connection like websocket_server does. Redials with exponential backoff " +
			"and full jitter (retry), waits `cooldown` after `attempts` failures in a row, pings every heartbeat interval " +
			"and redials a peer silent for the heartbeat timeout. Each peer is a durable link from the start: its " +
			"deliveries wait in its outbox while it is away. When both ends dial each other one connection is kept: " +
			"the one dialled by the instance whose id sorts lower.",
		Example: `source "websocket_client" "peers" {
  peer "azure-1" {
    url   = "wss://azure.example.com:7070/ws"
    tags  = ["azure", "production"]
    token = "change-me"
    tls {
      ca_file     = "ca.pem"
      server_name = "azure.example.com"
    }
  }
  retry {
    interval     = "5s"
    max_interval = "1m"
    attempts     = 10
    cooldown     = "5m"
  }
  heartbeat {
    interval = "10s"
    timeout  = "30s"
  }
}
`,
		NewConfig: func() any {
			return &ClientConfig{Retry: DefaultRetry(), Heartbeat: DefaultHeartbeat()}
		},
		Build: func(cfg any, bc *pipeline.BuildContext) (any, error) {
			return NewClient(*cfg.(*ClientConfig), bc)
		},
	})
}

// Peer states reported by Client.PeerState.
const (
	PeerIdle       = "idle"       // Run has not started
	PeerConnecting = "connecting" // dialling, or exchanging HELLO
	PeerConnected  = "connected"  // the link is up (on our connection or the peer's)
	PeerBackoff    = "backoff"    // waiting before the next dial
	PeerCooldown   = "cooldown"   // waiting retry.cooldown after retry.attempts failures
	PeerStopped    = "stopped"    // Run returned or Close was called
)

// Client is the websocket_client source. Its methods are safe for
// concurrent use.
type Client struct {
	cfg   ClientConfig
	self  pipeline.Instance
	links *link.Registry
	log   *slog.Logger
	m     *clientMetrics
	peers []*peer
	name  string                // the part's name, in logs and metrics
	reg   prometheus.Registerer // for the peers' TLS reload metrics

	live    liveConns // our live connections
	mu      sync.Mutex
	closed  bool
	dialers sync.WaitGroup

	closeOnce sync.Once
	done      chan struct{} // closed by Close
}

var (
	_ pipeline.Source = (*Client)(nil)
	_ pipeline.Closer = (*Client)(nil)
)

// NewClient builds a websocket_client source (what the kind's Build does):
// it loads every peer's TLS files and declares every peer as a durable,
// configured link of the registry, so that it is a recipient (its outbox
// fills) before the first connection. It does not dial yet: see Run.
func NewClient(cfg ClientConfig, bc *pipeline.BuildContext) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if bc.Links == nil {
		return nil, errors.New("websocket_client needs the link registry")
	}
	log := bc.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newClientMetrics(bc.Metrics)
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, self: bc.Instance, links: bc.Links, log: log, m: m,
		name: sourceLabel(bc, "websocket_client"), reg: bc.Metrics,
		done: make(chan struct{})}
	for _, pc := range cfg.Peers {
		p, err := newPeer(c, pc)
		if err != nil {
			return nil, fmt.Errorf("peer %q: %w", pc.ID, err)
		}
		c.peers = append(c.peers, p)
	}
	return c, nil
}

// Run implements pipeline.Source: it dials every peer (one goroutine each)
// and emits the frames of their connections until ctx is cancelled or Close
// is called. It then stops dialling, stops reading every connection (they
// stay attached, so that ACKs of messages in flight reach the peers), waits
// for the diallers and returns nil. Called once, by the runner.
func (c *Client) Run(ctx context.Context, emit func(*pipeline.Envelope) bool) error {
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	for _, p := range c.peers {
		if p.tls != nil {
			p.tls.start()
		}
		c.dialers.Add(1)
		go func() {
			defer c.dialers.Done()
			p.run(dctx, emit)
		}()
	}
	c.mu.Unlock()
	select {
	case <-ctx.Done():
	case <-c.done:
	}
	cancel()
	c.live.stopReads()
	c.dialers.Wait()
	return nil
}

// Close implements pipeline.Closer: it stops dialling, detaches and closes
// every connection left (1001) and waits for the diallers and the
// connections' writers. Called by the runner after Run returned; safe to
// call again, or early (Run then returns).
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		close(c.done) // Run cancels the diallers
		c.live.stopReads()
		c.dialers.Wait()
		c.live.closeAll(c.links)
		for _, p := range c.peers {
			p.setState(PeerStopped)
			if p.tls != nil {
				p.tls.close()
			}
		}
	})
	return nil
}

// PeerState reports the state of peer id: PeerConnected while its link is
// up (on our connection or on the peer's), else what its dialler is doing:
// PeerIdle, PeerConnecting, PeerBackoff, PeerCooldown or PeerStopped. It is
// "" for an id that is not a configured peer.
func (c *Client) PeerState(id string) string {
	for _, p := range c.peers {
		if p.cfg.ID != id {
			continue
		}
		if s := p.State(); s != PeerStopped && p.link.Connected() {
			return PeerConnected
		}
		return p.State()
	}
	return ""
}

// PeerLastError is why the last connection attempt to peer id, or its
// last connection, ended ("" when none did, or id is not configured here).
func (c *Client) PeerLastError(id string) string {
	for _, p := range c.peers {
		if p.cfg.ID == id {
			p.mu.Lock()
			defer p.mu.Unlock()
			return p.lastErr
		}
	}
	return ""
}

// Peers lists the configured peer ids, in config order.
func (c *Client) Peers() []string {
	ids := make([]string, len(c.peers))
	for i, p := range c.peers {
		ids[i] = p.cfg.ID
	}
	return ids
}

// clientMetrics are the websocket_client's instruments, shared by every
// websocket_client source of an instance.
type clientMetrics struct {
	connects *prometheus.CounterVec // peer, outcome
	timeouts *prometheus.CounterVec // peer
}

// Outcomes of slipstream_peer_connects_total.
const (
	outcomeOK        = "ok"
	outcomeError     = "error"
	outcomeDuplicate = "duplicate"
)

func newClientMetrics(reg prometheus.Registerer) (*clientMetrics, error) {
	m := &clientMetrics{
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slipstream_peer_connects_total",
			Help: "Dials of peers by outcome: ok (attached), error (dial, HELLO or attach failed), duplicate (the connection lost the tie-break against the other end's connection).",
		}, []string{"peer", "outcome"}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slipstream_peer_heartbeat_timeouts_total",
			Help: "Dialled peer connections closed because the peer was silent for the heartbeat timeout.",
		}, []string{"peer"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.connects, err = telemetry.RegisterShared(reg, m.connects); err != nil {
		return nil, err
	}
	if m.timeouts, err = telemetry.RegisterShared(reg, m.timeouts); err != nil {
		return nil, err
	}
	return m, nil
}
