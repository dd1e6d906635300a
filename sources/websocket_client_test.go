package sources

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/goleak"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/testutil"
	"github.com/slipstream-sync/slipstream/pipeline"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Badger's cache keeps a process-wide helper.
		goleak.IgnoreTopFunction("github.com/dgraph-io/ristretto/v2.(*defaultPolicy[...]).processItems"),
		goleak.IgnoreAnyFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
	)
}

// fast is a retry policy for tests.
var fast = RetryConfig{Interval: 10 * time.Millisecond, MaxInterval: 40 * time.Millisecond, Cooldown: time.Minute}

// node is one instance's websocket sources, built through their kinds, with
// a real store and link registry: a websocket_server on 127.0.0.1:0 and,
// once addClient is called, a websocket_client.
type node struct {
	t       *testing.T
	id      string
	st      *store.Store
	links   *link.Registry
	metrics *prometheus.Registry
	logs    *testutil.SyncBuffer // the node's logs (debug and up), for assertions
	log     *slog.Logger
	srv     *Server
	cl      *Client
	envs    chan *pipeline.Envelope

	ctx    context.Context
	cancel context.CancelFunc
	runs   sync.WaitGroup
	closed bool
}

func newNode(t *testing.T, id string) *node {
	t.Helper()
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	logs := &testutil.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("instance", id)
	links, err := link.NewRegistry(st, id, log)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	n := &node{t: t, id: id, st: st, links: links, metrics: prometheus.NewRegistry(), logs: logs, log: log,
		envs: make(chan *pipeline.Envelope, 1000)}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	kind, _ := pipeline.Lookup(pipeline.ClassSource, "websocket_server")
	cfg := kind.NewConfig().(*ServerConfig)
	cfg.Listen = "127.0.0.1:0"
	cfg.DefaultTags = []string{"local"}
	part, err := kind.Build(cfg, n.buildContext("ingress"))
	if err != nil {
		n.close()
		t.Fatal(err)
	}
	n.srv = part.(*Server)
	if err := n.srv.Start(context.Background()); err != nil {
		n.close()
		t.Fatal(err)
	}
	return n
}

func (n *node) buildContext(name string) *pipeline.BuildContext {
	return &pipeline.BuildContext{
		Instance: pipeline.Instance{ID: n.id, ClusterGroup: "cg-" + n.id, Tags: []string{"tag-" + n.id}},
		Name:     name,
		Store:    n.st,
		Links:    n.links,
		Logger:   n.log,
		Metrics:  n.metrics,
		Tracer:   noop.NewTracerProvider().Tracer("test"),
	}
}

// url is the node's WebSocket URL.
func (n *node) url() string { return "ws://" + n.srv.Addr().String() + "/ws" }

// buildClient builds a websocket_client through its kind with peers and
// mut applied to the defaults.
func (n *node) buildClient(peers []PeerConfig, mut func(*ClientConfig)) (*Client, error) {
	kind, ok := pipeline.Lookup(pipeline.ClassSource, "websocket_client")
	if !ok {
		n.t.Fatal("websocket_client kind not registered")
	}
	cfg := kind.NewConfig().(*ClientConfig)
	cfg.Peers = peers
	cfg.Retry = fast
	if mut != nil {
		mut(cfg)
	}
	part, err := kind.Build(cfg, n.buildContext("peers"))
	if err != nil {
		return nil, err
	}
	return part.(*Client), nil
}

func (n *node) addClient(peers []PeerConfig, mut func(*ClientConfig)) *Client {
	n.t.Helper()
	cl, err := n.buildClient(peers, mut)
	if err != nil {
		n.t.Fatal(err)
	}
	n.cl = cl
	return cl
}

func (n *node) emit(e *pipeline.Envelope) bool {
	select {
	case n.envs <- e:
		return true
	case <-n.ctx.Done():
		return false
	}
}

// run starts Run of the node's sources.
func (n *node) run() {
	n.runs.Add(1)
	go func() {
		defer n.runs.Done()
		_ = n.srv.Run(n.ctx, n.emit)
	}()
	if n.cl != nil {
		n.runs.Add(1)
		go func() {
			defer n.runs.Done()
			_ = n.cl.Run(n.ctx, n.emit)
		}()
	}
}

func (n *node) close() {
	if n.closed {
		return
	}
	n.closed = true
	n.cancel()
	n.runs.Wait()
	if n.cl != nil {
		n.cl.Close()
	}
	if n.srv != nil {
		n.srv.Close()
	}
	n.links.Close()
	n.st.Close()
}

// next returns the next envelope the node emitted.
func (n *node) next() *pipeline.Envelope {
	n.t.Helper()
	select {
	case e := <-n.envs:
		return e
	case <-time.After(wait):
		n.t.Fatal("no envelope emitted")
		return nil
	}
}

// connected waits until link id of n is up and returns its connection.
func (n *node) connected(id string) *Conn {
	n.t.Helper()
	var c *Conn
	testutil.CheckFor(n.t, wait, 2*time.Millisecond, func() error {
		l := n.links.Get(id)
		if l == nil || l.Conn() == nil {
			return fmt.Errorf("%s: link %q is not connected", n.id, id)
		}
		c = l.Conn().(*Conn)
		return nil
	})
	return c
}

// liveConns counts the node's open connections, both sources together.
func (n *node) liveConns() int {
	count := n.srv.live.open()
	if n.cl != nil {
		count += n.cl.live.open()
	}
	return count
}

func (c *Conn) isClosed() bool {
	select {
	case <-c.Done():
		return true
	default:
		return false
	}
}

// counter reads a counter of the node's registry (0 when absent).
func (n *node) counter(name string, labels map[string]string) float64 {
	n.t.Helper()
	mfs, err := n.metrics.Gather()
	if err != nil {
		n.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func (n *node) connects(peer, outcome string) float64 {
	return n.counter("slipstream_peer_connects_total", map[string]string{"peer": peer, "outcome": outcome})
}

// peerAt is a peer block for id at url.
func peerAt(id, url string) PeerConfig {
	return PeerConfig{ID: id, URL: url, Tags: []string{"via-" + id}}
}

func TestClientConfigValidate(t *testing.T) {
	kind, _ := pipeline.Lookup(pipeline.ClassSource, "websocket_client")
	tests := []struct {
		name  string
		mut   func(*ClientConfig)
		field string
	}{
		{"defaults", func(*ClientConfig) {}, ""},
		{"a good peer", func(c *ClientConfig) { c.Peers = []PeerConfig{{ID: "p", URL: "wss://h:1/ws"}} }, ""},
		{"url scheme", func(c *ClientConfig) { c.Peers = []PeerConfig{{ID: "p", URL: "http://h/ws"}} }, "peer[0].url"},
		{"url without host", func(c *ClientConfig) { c.Peers = []PeerConfig{{ID: "p", URL: "ws:///ws"}} }, "peer[0].url"},
		{"empty id", func(c *ClientConfig) { c.Peers = []PeerConfig{{URL: "ws://h/ws"}} }, "peer[0].id"},
		{"duplicate id", func(c *ClientConfig) {
			c.Peers = []PeerConfig{{ID: "p", URL: "ws://h/ws"}, {ID: "p", URL: "ws://i/ws"}}
		}, "peer[1]"},
		{"bad tag", func(c *ClientConfig) { c.Peers = []PeerConfig{{ID: "p", URL: "ws://h/ws", Tags: []string{""}}} }, "peer[0].tags"},
		{"tls on ws://", func(c *ClientConfig) { c.Peers = []PeerConfig{{ID: "p", URL: "ws://h/ws", TLS: &PeerTLS{}}} }, "peer[0].tls"},
		{"cert without key", func(c *ClientConfig) {
			c.Peers = []PeerConfig{{ID: "p", URL: "wss://h/ws", TLS: &PeerTLS{CertFile: "c.pem"}}}
		}, "peer[0].tls.key_file"},
		{"interval 0", func(c *ClientConfig) { c.Retry.Interval = 0 }, "retry.interval"},
		{"max below interval", func(c *ClientConfig) { c.Retry.MaxInterval = time.Second }, "retry.max_interval"},
		{"negative attempts", func(c *ClientConfig) { c.Retry.Attempts = -1 }, "retry.attempts"},
		{"cooldown 0", func(c *ClientConfig) { c.Retry.Cooldown = 0 }, "retry.cooldown"},
		{"heartbeat", func(c *ClientConfig) { c.Heartbeat.Timeout = c.Heartbeat.Interval }, "heartbeat.timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := kind.NewConfig().(*ClientConfig)
			tt.mut(cfg)
			err := cfg.Validate()
			var fe *pipeline.FieldError
			if tt.field == "" && err != nil || tt.field != "" && (!errors.As(err, &fe) || fe.Field != tt.field) {
				t.Fatalf("Validate() = %v, want field %q", err, tt.field)
			}
		})
	}
	if diags := pipeline.CheckExamples(pipeline.DefaultKinds); diags.HasErrors() {
		t.Fatalf("kind examples: %s", pipeline.FormatDiagnostics(diags))
	}
}

// The websocket_client block of shared/CONFIG.md, with its commented peer
// block switched on, decodes into the kind's config as written there.
func TestClientConfigMatchesCONFIGmd(t *testing.T) {
	md, err := os.ReadFile("../../shared/CONFIG.md")
	if err != nil {
		t.Skip("shared/CONFIG.md not beside the repository:", err)
	}
	m := regexp.MustCompile(`(?s)source "websocket_client" "peers" \{\n.*?\n\}\n`).Find(md)
	if m == nil {
		t.Fatal("no websocket_client block in CONFIG.md")
	}
	src := regexp.MustCompile(`(?m)^  # `).ReplaceAll(m, []byte("  "))
	src = bytes.ReplaceAll(src, []byte(`env("AZURE_TOKEN")`), []byte(`"t0k"`))
	file, diags := hclsyntax.ParseConfig(src, "CONFIG.md", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatalf("%s\n%s", pipeline.FormatDiagnostics(diags), src)
	}
	block := file.Body.(*hclsyntax.Body).Blocks[0]
	kind, _ := pipeline.Lookup(pipeline.ClassSource, "websocket_client")
	cfg := kind.NewConfig().(*ClientConfig)
	if diags := pipeline.DecodeBody(block.Body, nil, cfg); diags.HasErrors() {
		t.Fatalf("%s\n%s", pipeline.FormatDiagnostics(diags), src)
	}
	p := cfg.Peers
	if len(p) != 1 || p[0].ID != "azure-1" || p[0].Token != "t0k" || !slices.Equal(p[0].Tags, []string{"azure", "production"}) ||
		p[0].TLS == nil || p[0].TLS.CAFile != "ca.pem" || p[0].TLS.KeyFile != "me-key.pem" || p[0].TLS.ServerName != "azure.example.com" {
		t.Fatalf("peers = %+v", p)
	}
	if cfg.Retry != DefaultRetry() || cfg.Heartbeat != DefaultHeartbeat() {
		t.Fatalf("retry = %+v, heartbeat = %+v", cfg.Retry, cfg.Heartbeat)
	}
}

// The redial delays stay within [interval, max_interval], grow with the
// failures, and use the whole jitter range; attempts failures in a row bring
// the cooldown.
func TestBackoff(t *testing.T) {
	cfg := RetryConfig{Interval: 100 * time.Millisecond, MaxInterval: time.Second, Attempts: 5, Cooldown: time.Minute}
	lowest := &backoff{cfg: cfg, int64N: func(int64) int64 { return 0 }}
	highest := &backoff{cfg: cfg, int64N: func(n int64) int64 { return n - 1 }}
	wantHigh := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for n, want := range wantHigh {
		if got := highest.delay(n); got != want*time.Millisecond {
			t.Errorf("highest delay(%d) = %s, want %s", n, got, want*time.Millisecond)
		}
		if got := lowest.delay(n); got != cfg.Interval {
			t.Errorf("lowest delay(%d) = %s, want interval", n, got)
		}
	}
	if got := highest.delay(1000); got != cfg.MaxInterval {
		t.Errorf("delay(1000) = %s, want max_interval (no overflow)", got)
	}

	// A seeded source: every delay within its bounds.
	var calls int64
	seeded := &backoff{cfg: cfg, int64N: func(n int64) int64 {
		calls = calls*6364136223846793005 + 1442695040888963407
		return int64(uint64(calls)>>1) % n
	}}
	for n := range 20 {
		ceil := min(cfg.Interval<<min(n, 20), cfg.MaxInterval)
		for range 50 {
			if d := seeded.delay(n); d < cfg.Interval || d > ceil {
				t.Fatalf("delay(%d) = %s, outside [%s, %s]", n, d, cfg.Interval, ceil)
			}
		}
	}

	for n := 1; n < cfg.Attempts; n++ {
		if _, cool := highest.next(n); cool {
			t.Fatalf("next(%d) is the cooldown before %d attempts", n, cfg.Attempts)
		}
	}
	if d, cool := highest.next(cfg.Attempts); !cool || d != cfg.Cooldown {
		t.Fatalf("next(%d) = %s, %v; want the cooldown", cfg.Attempts, d, cool)
	}
	cfg.Attempts = 0
	never := &backoff{cfg: cfg, int64N: func(n int64) int64 { return n - 1 }}
	if d, cool := never.next(1 << 20); cool || d != cfg.MaxInterval {
		t.Fatalf("attempts 0: next = %s, %v; want max_interval, no cooldown", d, cool)
	}
}

// The dialler sends our HELLO, checks the answer and attaches its
// connection to the configured peer's link; frames flow both ways.
func TestClientHelloAndAttach(t *testing.T) {
	defer goleak.VerifyNone(t)
	remote := newNode(t, "peer-1")
	defer remote.close()
	local := newNode(t, "self-1")
	defer local.close()
	cl := local.addClient([]PeerConfig{{ID: "peer-1", URL: remote.url(), Tags: []string{"gcp"}, AllowCommands: true}}, nil)

	// Declared before the first connection: a durable peer, a recipient.
	l := local.links.Get("peer-1")
	if l == nil || !l.Durable() || !l.IsPeer() || !l.Configured() || l.Connected() || cl.PeerState("peer-1") != PeerIdle {
		t.Fatalf("before Run: link %v, state %q", l, cl.PeerState("peer-1"))
	}
	remote.run()
	local.run()

	c := local.connected("peer-1")
	if !c.Dialed() || !slices.Equal(l.Tags(), []string{"gcp"}) || !l.Acks() || !l.AllowCommands() {
		t.Fatalf("local link peer-1: dialed=%v tags=%v acks=%v commands=%v", c.Dialed(), l.Tags(), l.Acks(), l.AllowCommands())
	}
	if s := cl.PeerState("peer-1"); s != PeerConnected {
		t.Fatalf("PeerState = %q, want connected", s)
	}
	// The remote got our HELLO: a peer link named by our id, with our tags.
	rc := remote.connected("self-1")
	rl := remote.links.Get("self-1")
	if rc.Dialed() || !rl.IsPeer() || !rl.Acks() || !slices.Equal(rl.Tags(), []string{"tag-self-1"}) {
		t.Fatalf("remote link self-1: dialed=%v peer=%v acks=%v tags=%v", rc.Dialed(), rl.IsPeer(), rl.Acks(), rl.Tags())
	}
	if rc.RemoteAddr() != c.LocalAddr() {
		t.Fatalf("the two ends are not one connection: %s vs %s", rc.RemoteAddr(), c.LocalAddr())
	}
	if local.connects("peer-1", "ok") != 1 {
		t.Fatalf("connects ok = %v", local.connects("peer-1", "ok"))
	}

	const frame = `{"type":"SK","messageId":"m1","key":"k","value":1}`
	rl.SendControl([]byte(frame))
	if e := local.next(); e.From.ID() != "peer-1" || !e.From.IsPeer() || string(e.Raw) != frame {
		t.Fatalf("local emitted %q from %s", e.Raw, e.From.ID())
	}
	l.SendControl([]byte(frame))
	if e := remote.next(); e.From.ID() != "self-1" || string(e.Raw) != frame {
		t.Fatalf("remote emitted %q from %s", e.Raw, e.From.ID())
	}
}

// A peer whose HELLO names another instance is not attached; the dialler
// logs both ids and retries.
func TestClientWrongPeerID(t *testing.T) {
	defer goleak.VerifyNone(t)
	remote := newNode(t, "peer-1")
	defer remote.close()
	local := newNode(t, "self-1")
	defer local.close()
	local.addClient([]PeerConfig{peerAt("peer-9", remote.url())}, nil)
	remote.run()
	local.run()

	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if n := local.connects("peer-9", "error"); n < 3 {
			return fmt.Errorf("%v failed connects, want 3 or more", n)
		}
		return nil
	})
	if local.links.Get("peer-9").Connected() || local.connects("peer-9", "ok") != 0 {
		t.Fatal("a connection to the wrong instance was attached")
	}
	logs := local.logs.String()
	if !regexp.MustCompile(`level=ERROR.*want=peer-9 got=peer-1`).MatchString(logs) {
		t.Fatalf("no error naming both ids in the logs:\n%s", logs)
	}
}

// attempts failures in a row bring the cooldown; then it starts over.
func TestClientAttemptsAndCooldown(t *testing.T) {
	defer goleak.VerifyNone(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "ws://" + ln.Addr().String() + "/ws"
	ln.Close() // connections are refused from now on

	local := newNode(t, "self-1")
	defer local.close()
	const cooldown = 300 * time.Millisecond
	cl := local.addClient([]PeerConfig{peerAt("peer-1", dead)}, func(c *ClientConfig) {
		c.Retry = RetryConfig{Interval: 5 * time.Millisecond, MaxInterval: 10 * time.Millisecond, Attempts: 3, Cooldown: cooldown}
	})
	local.run()

	var coolingSince time.Time
	testutil.CheckFor(t, wait, time.Millisecond, func() error {
		if s := cl.PeerState("peer-1"); s != PeerCooldown {
			return fmt.Errorf("state %q", s)
		}
		coolingSince = time.Now()
		return nil
	})
	if n := local.connects("peer-1", "error"); n != 3 {
		t.Fatalf("%v failed dials before the cooldown, want 3", n)
	}
	testutil.CheckFor(t, wait, time.Millisecond, func() error {
		if n := local.connects("peer-1", "error"); n < 4 {
			return fmt.Errorf("%v failed dials", n)
		}
		return nil
	})
	if d := time.Since(coolingSince); d < cooldown/2 {
		t.Fatalf("dialled again %s after the cooldown began, want about %s", d, cooldown)
	}
	// Close during a backoff or cooldown returns promptly.
	start := time.Now()
	local.close()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %s", d)
	}
	if s := cl.PeerState("peer-1"); s != PeerStopped {
		t.Fatalf("state after Close = %q", s)
	}
}

// When the server closes the connection the dialler redials.
func TestClientRedialsAfterServerClose(t *testing.T) {
	defer goleak.VerifyNone(t)
	remote := newNode(t, "peer-1")
	defer remote.close()
	local := newNode(t, "self-1")
	defer local.close()
	local.addClient([]PeerConfig{peerAt("peer-1", remote.url())}, nil)
	remote.run()
	local.run()

	first := local.connected("peer-1")
	remote.connected("self-1").Close(websocket.CloseGoingAway, "bye")
	testutil.CheckFor(t, wait, 2*time.Millisecond, func() error {
		c := local.links.Get("peer-1").Conn()
		if c == nil || c == link.Conn(first) {
			return errors.New("not redialled yet")
		}
		return nil
	})
	remote.connected("self-1")
	if n := local.connects("peer-1", "ok"); n != 2 {
		t.Fatalf("connects ok = %v, want 2", n)
	}
}

// rawPeer is a hand-written peer: it records the upgrade request, answers
// HELLO as id and then only reads. pingHandler replaces gorilla's (nil:
// answer pings).
type rawPeer struct {
	t           *testing.T
	id          string
	pingHandler func(string) error
	srv         *httptest.Server
	handlers    sync.WaitGroup

	mu      sync.Mutex
	headers []http.Header
	conns   []*websocket.Conn
}

func newRawPeer(t *testing.T, id string, tlsCfg *tls.Config, pingHandler func(string) error) *rawPeer {
	p := &rawPeer{t: t, id: id, pingHandler: pingHandler}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(p.serve))
	p.srv.Config.ErrorLog = slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)
	if tlsCfg != nil {
		p.srv.TLS = tlsCfg
		p.srv.StartTLS()
	} else {
		p.srv.Start()
	}
	return p
}

func (p *rawPeer) url() string {
	return strings.Replace(p.srv.URL, "http", "ws", 1) + "/ws"
}

func (p *rawPeer) serve(w http.ResponseWriter, r *http.Request) {
	p.handlers.Add(1)
	defer p.handlers.Done()
	p.mu.Lock()
	p.headers = append(p.headers, r.Header.Clone())
	p.mu.Unlock()
	up := websocket.Upgrader{}
	ws, err := up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer ws.Close()
	p.mu.Lock()
	p.conns = append(p.conns, ws)
	p.mu.Unlock()
	if p.pingHandler != nil {
		ws.SetPingHandler(p.pingHandler)
	}
	if _, _, err := ws.ReadMessage(); err != nil { // our HELLO
		return
	}
	acks := true
	hello := slipstream.Encode(&slipstream.Message{Type: slipstream.TypeHELLO, Protocol: 1, InstanceID: p.id, Role: "peer", Acks: &acks})
	if err := ws.WriteMessage(websocket.TextMessage, hello); err != nil {
		return
	}
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			return
		}
	}
}

func (p *rawPeer) requests() []http.Header {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.headers)
}

func (p *rawPeer) close() {
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.srv.Close()
	p.handlers.Wait()
}

// A peer that stops answering pings is declared dead after the heartbeat
// timeout, counted, and redialled.
func TestClientHeartbeatTimeout(t *testing.T) {
	defer goleak.VerifyNone(t)
	mute := newRawPeer(t, "mute-1", nil, func(string) error { return nil })
	defer mute.close()
	local := newNode(t, "self-1")
	defer local.close()
	const timeout = 200 * time.Millisecond
	local.addClient([]PeerConfig{peerAt("mute-1", mute.url())}, func(c *ClientConfig) {
		c.Heartbeat = HeartbeatConfig{Interval: 50 * time.Millisecond, Timeout: timeout}
	})
	local.run()
	local.connected("mute-1")
	start := time.Now()
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		n := local.counter("slipstream_peer_heartbeat_timeouts_total", map[string]string{"peer": "mute-1"})
		if n < 1 || local.connects("mute-1", "ok") < 2 {
			return fmt.Errorf("%v heartbeat timeouts, %v connects", n, local.connects("mute-1", "ok"))
		}
		return nil
	})
	if d := time.Since(start); d < timeout/2 {
		t.Fatalf("declared dead after %s, before the timeout of %s", d, timeout)
	}
	if !strings.Contains(local.logs.String(), "heartbeat timeout") {
		t.Fatal("the disconnection reason is not logged")
	}
}

// The token is sent as a bearer header and never logged.
func TestClientBearerToken(t *testing.T) {
	defer goleak.VerifyNone(t)
	raw := newRawPeer(t, "peer-1", nil, nil)
	defer raw.close()
	local := newNode(t, "self-1")
	defer local.close()
	pc := peerAt("peer-1", raw.url())
	pc.Token = "s3cret-t0ken"
	local.addClient([]PeerConfig{pc}, nil)
	local.run()
	local.connected("peer-1")
	reqs := raw.requests()
	if len(reqs) == 0 || reqs[0].Get("Authorization") != "Bearer s3cret-t0ken" {
		t.Fatalf("upgrade request headers: %v", reqs)
	}
	local.close()
	if strings.Contains(local.logs.String(), "s3cret") {
		t.Fatal("the token appears in the logs")
	}
}

// testPKI writes a CA certificate to dir and returns it with a server
// certificate for dnsName signed by it.
func testPKI(t *testing.T, dir, dnsName string) (caFile string, server tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "slipstream test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: dnsName}, DNSNames: []string{dnsName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return caFile, tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}
}

// wss:// with the CA of ca_file and server_name; a wrong name fails; a
// missing file is a Build error that names it.
func TestClientTLS(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := t.TempDir()
	caFile, cert := testPKI(t, dir, "peer.test")
	raw := newRawPeer(t, "peer-1", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil)
	defer raw.close()
	local := newNode(t, "self-1")
	defer local.close()

	good := peerAt("peer-1", raw.url())
	good.TLS = &PeerTLS{CAFile: caFile, ServerName: "peer.test"}
	wrongName := peerAt("peer-2", raw.url()) // verified against 127.0.0.1
	wrongName.TLS = &PeerTLS{CAFile: caFile}
	systemRoots := peerAt("peer-3", raw.url())
	local.addClient([]PeerConfig{good, wrongName, systemRoots}, nil)
	local.run()
	local.connected("peer-1")
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if local.connects("peer-2", "error") < 2 || local.connects("peer-3", "error") < 2 {
			return errNotYetTLS
		}
		return nil
	})
	if local.links.Get("peer-2").Connected() || local.links.Get("peer-3").Connected() {
		t.Fatal("a peer with an unverifiable certificate was attached")
	}
	if logs := local.logs.String(); !strings.Contains(logs, "certificate") {
		t.Fatalf("the TLS failure is not explained in the logs:\n%s", logs)
	}

	// Build errors name the file.
	missing := peerAt("peer-4", "wss://127.0.0.1:1/ws")
	missing.TLS = &PeerTLS{CAFile: filepath.Join(dir, "nope.pem")}
	if _, err := local.buildClient([]PeerConfig{missing}, nil); err == nil || !strings.Contains(err.Error(), "ca_file") || !strings.Contains(err.Error(), "nope.pem") {
		t.Fatalf("Build with a missing ca_file: %v", err)
	}
	notPEM := filepath.Join(dir, "not.pem")
	_ = os.WriteFile(notPEM, []byte("hello"), 0o600)
	missing.TLS = &PeerTLS{CAFile: notPEM}
	if _, err := local.buildClient([]PeerConfig{missing}, nil); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("Build with a ca_file holding no certificate: %v", err)
	}
	// insecure_skip_verify is loud.
	missing.TLS = &PeerTLS{InsecureSkipVerify: true}
	if _, err := local.buildClient([]PeerConfig{missing}, nil); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`level=WARN msg="INSECURE`).MatchString(local.logs.String()) {
		t.Fatal("insecure_skip_verify is not warned about")
	}
}

var errNotYetTLS = errors.New("the unverifiable peers have not failed twice yet")

// Both ends dial each other: one connection serves the link on both sides,
// the one dialled by the lower id, every time.
func TestBothEndsDialTieBreak(t *testing.T) {
	defer goleak.VerifyNone(t)
	for i := range 5 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			a := newNode(t, "a-1")
			defer a.close()
			b := newNode(t, "b-1")
			defer b.close()
			a.addClient([]PeerConfig{peerAt("b-1", b.url())}, nil)
			b.addClient([]PeerConfig{peerAt("a-1", a.url())}, nil)
			a.run()
			b.run()

			testutil.CheckFor(t, wait, 2*time.Millisecond, func() error {
				ac, bc := a.links.Get("b-1").Conn(), b.links.Get("a-1").Conn()
				switch {
				case ac == nil || bc == nil:
					return errors.New("not connected on both sides")
				case !ac.(*Conn).Dialed() || bc.(*Conn).Dialed():
					return errors.New("the link is not on a-1's connection yet")
				case ac.(*Conn).LocalAddr() != bc.RemoteAddr():
					return fmt.Errorf("different connections: %s vs %s", ac.(*Conn).LocalAddr(), bc.RemoteAddr())
				case a.liveConns() != 1 || b.liveConns() != 1:
					return fmt.Errorf("live connections: a-1 %d, b-1 %d", a.liveConns(), b.liveConns())
				}
				return nil
			})
			// b-1's dialler waits on a-1's connection and does not dial again.
			testutil.CheckFor(t, wait, 2*time.Millisecond, func() error {
				if s := b.cl.peers[0].State(); s != PeerConnected {
					return fmt.Errorf("b-1's dialler is %q", s)
				}
				if s := b.cl.PeerState("a-1"); s != PeerConnected {
					return fmt.Errorf("b-1's PeerState is %q", s)
				}
				return nil
			})
			dials := b.connects("a-1", "ok") + b.connects("a-1", "duplicate") + b.connects("a-1", "error")
			holdsFor(t, 20*fast.Interval, func() error {
				if n := b.connects("a-1", "ok") + b.connects("a-1", "duplicate") + b.connects("a-1", "error"); n != dials {
					return fmt.Errorf("b-1 dialled again: %v dials, was %v", n, dials)
				}
				if a.liveConns() != 1 || b.liveConns() != 1 {
					return fmt.Errorf("live connections: a-1 %d, b-1 %d", a.liveConns(), b.liveConns())
				}
				return nil
			})
			if a.connects("b-1", "ok") < 1 {
				t.Fatal("a-1 never connected")
			}
		})
	}
}

// holdsFor checks fn every millisecond for d; the first error fails.
func holdsFor(t *testing.T, d time.Duration, fn func() error) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if err := fn(); err != nil {
			t.Fatal(err)
		}
	}
}
