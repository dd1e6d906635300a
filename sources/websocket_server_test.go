package sources

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/testutil"
	"github.com/slipstream-sync/slipstream/pipeline"
)

const sk = `{"type":"SK","messageId":"m1","key":"k","value":1}`

func TestConfigValidate(t *testing.T) {
	kind, _ := pipeline.Lookup(pipeline.ClassSource, "websocket_server")
	tests := []struct {
		name  string
		mut   func(*ServerConfig)
		field string
	}{
		{"defaults", func(*ServerConfig) {}, ""},
		{"listen", func(c *ServerConfig) { c.Listen = "7070" }, "listen"},
		{"path", func(c *ServerConfig) { c.Path = "ws" }, "path"},
		{"default_tags", func(c *ServerConfig) { c.DefaultTags = []string{""} }, "default_tags"},
		{"max_frame", func(c *ServerConfig) { c.MaxFrame = 0 }, "max_frame"},
		{"inbound_peer tags", func(c *ServerConfig) {
			c.InboundPeers = []InboundPeer{{ID: "b"}, {ID: "c", Tags: []string{""}}}
		}, "inbound_peer[1].tags"},
		{"inbound_peer twice", func(c *ServerConfig) { c.InboundPeers = []InboundPeer{{ID: "b"}, {ID: "b"}} }, "inbound_peer"},
		{"inbound_peer id", func(c *ServerConfig) { c.InboundPeers = []InboundPeer{{ID: "a\x00b"}} }, "inbound_peer[0].id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := kind.NewConfig().(*ServerConfig)
			tt.mut(cfg)
			err := cfg.Validate()
			var fe *pipeline.FieldError
			if tt.field == "" && err != nil || tt.field != "" && (!errors.As(err, &fe) || fe.Field != tt.field) {
				t.Fatalf("Validate() = %v, want field %q", err, tt.field)
			}
		})
	}
	hb := DefaultHeartbeat()
	hb.Timeout = hb.Interval
	var fe *pipeline.FieldError
	if err := hb.Validate(); !errors.As(err, &fe) || fe.Field != "timeout" {
		t.Fatalf("heartbeat Validate() = %v, want a timeout error", err)
	}
}

func TestHelloAnsweredAndLinkRenamed(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, nil)
	defer h.close()
	c := h.dial("")
	defer c.Close()

	eph := h.onlyLink()
	if !strings.HasPrefix(eph.ID(), "con-") || eph.Durable() {
		t.Fatalf("before HELLO: link %q durable=%v, want an ephemeral con- link", eph.ID(), eph.Durable())
	}
	send(t, c, `{"type":"HELLO","protocol":1,"instanceId":"pi-1","tags":["aws"],"role":"client","acks":false}`)
	got := readJSON(t, c)
	want := map[string]any{"type": "HELLO", "protocol": float64(1), "instanceId": self, "clusterGroupId": "c1",
		"tags": []any{"home"}, "role": "peer", "acks": true}
	for k, v := range want {
		if fmt.Sprint(got[k]) != fmt.Sprint(v) {
			t.Errorf("our HELLO %s = %v, want %v (frame %v)", k, got[k], v, got)
		}
	}
	l := h.linkState("pi-1", true)
	if !l.Durable() || l.IsPeer() || l.Acks() || !slices.Equal(l.Tags(), []string{"aws"}) {
		t.Fatalf("link pi-1: durable=%v peer=%v acks=%v tags=%v", l.Durable(), l.IsPeer(), l.Acks(), l.Tags())
	}
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if h.links.Get(eph.ID()) != nil {
			return fmt.Errorf("ephemeral link %s still exists", eph.ID())
		}
		return nil
	})
	send(t, c, sk)
	if e := h.next(); e.From.ID() != "pi-1" || string(e.Raw) != sk {
		t.Fatalf("emitted %q from %s", e.Raw, e.From.ID())
	}
	// A second HELLO is not the first frame: it goes to the pipeline.
	send(t, c, `{"type":"HELLO","instanceId":"pi-9"}`)
	if e := h.next(); !strings.Contains(string(e.Raw), "pi-9") {
		t.Fatalf("emitted %q, want the second HELLO", e.Raw)
	}
}

func TestHelloFromPeer(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, func(c *ServerConfig) { c.AllowCommands = true })
	defer h.close()
	c := h.dial("")
	defer c.Close()
	send(t, c, `{"type":"HELLO","protocol":1,"instanceId":"azure-1","clusterGroupId":"c2","role":"peer"}`)
	readJSON(t, c)
	l := h.linkState("azure-1", true)
	// No tags in the HELLO: the listener's default tags; acks default on.
	if !l.IsPeer() || !l.Acks() || !l.AllowCommands() || !slices.Equal(l.Tags(), []string{"local"}) {
		t.Fatalf("link azure-1: peer=%v acks=%v commands=%v tags=%v", l.IsPeer(), l.Acks(), l.AllowCommands(), l.Tags())
	}
}

// An inbound_peer is a durable peer link before it ever connects (a
// recipient of what is published meanwhile), with its declared tags until
// it announces its own; a peer it names that the instance knows already
// keeps the tags it last announced.
func TestInboundPeerDeclared(t *testing.T) {
	defer goleak.VerifyNone(t)
	declare := func(c *ServerConfig) {
		c.InboundPeers = []InboundPeer{{ID: "azure-1", Tags: []string{"azure"}}, {ID: "gcp-1", Tags: []string{"gcp"}}}
	}
	h := newHarness(t, declare)
	for id, tags := range map[string][]string{"azure-1": {"azure"}, "gcp-1": {"gcp"}} {
		l := h.linkState(id, false)
		if !l.Durable() || !l.IsPeer() || !l.Acks() || !slices.Equal(l.Tags(), tags) {
			t.Fatalf("declared link %s: durable=%v peer=%v acks=%v tags=%v", id, l.Durable(), l.IsPeer(), l.Acks(), l.Tags())
		}
	}
	m := &slipstream.Message{Type: slipstream.TypeSK, Key: "k", MessageID: "m1", OriginInstanceID: self,
		MessagePath: []string{self}, TargetedTags: []string{"azure"}}
	if got := h.links.Recipients(nil, self, m); len(got) != 1 || got[0].ID() != "azure-1" {
		t.Fatalf("recipients of a message targeted at azure: %v, want the declared azure-1", got)
	}

	// A HELLO without tags keeps the declared ones (not default_tags).
	c := h.dial("")
	send(t, c, `{"type":"HELLO","protocol":1,"instanceId":"azure-1","role":"peer"}`)
	readJSON(t, c)
	if l := h.linkState("azure-1", true); !slices.Equal(l.Tags(), []string{"azure"}) {
		t.Fatalf("azure-1 after a HELLO without tags: tags %v, want the declared [azure]", l.Tags())
	}
	c.Close()
	// A HELLO with tags replaces them, for good.
	c = h.dial("")
	send(t, c, `{"type":"HELLO","protocol":1,"instanceId":"gcp-1","tags":["gcp","eu"],"role":"peer"}`)
	readJSON(t, c)
	if l := h.linkState("gcp-1", true); !slices.Equal(l.Tags(), []string{"gcp", "eu"}) {
		t.Fatalf("gcp-1 after a HELLO with tags: %v", l.Tags())
	}
	c.Close()
	h.linkState("gcp-1", false)
	dir := h.st.Dir()
	h.close()

	// Restarted with the same declaration: gcp-1 keeps what it announced.
	h = newHarnessAt(t, dir, declare)
	defer h.close()
	if l := h.linkState("gcp-1", false); !slices.Equal(l.Tags(), []string{"gcp", "eu"}) {
		t.Fatalf("gcp-1 after a restart: tags %v, want those it announced", l.Tags())
	}
	// Declared, it cannot be forgotten (the operator removes the block first).
	if _, err := h.links.Forget("gcp-1"); !errors.Is(err, link.ErrDeclared) {
		t.Fatalf("Forget of a declared inbound peer: %v, want ErrDeclared", err)
	}
}

func TestInboundPeerOwnID(t *testing.T) {
	defer goleak.VerifyNone(t)
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	links, err := link.NewRegistry(st, self, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer links.Close()
	cfg := ServerConfig{Listen: "127.0.0.1:0", Path: "/ws", MaxFrame: 1 << 20, Heartbeat: DefaultHeartbeat(),
		Limits: DefaultLimits(), InboundPeers: []InboundPeer{{ID: self}}}
	_, err = NewServer(cfg, &pipeline.BuildContext{Instance: pipeline.Instance{ID: self}, Links: links,
		Metrics: prometheus.NewRegistry()})
	if err == nil || !strings.Contains(err.Error(), "own id") {
		t.Fatalf("NewServer with an inbound_peer named like the instance: %v, want an error naming its own id", err)
	}
}

func TestBadHellos(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, nil)
	defer h.close()
	for _, tt := range []struct{ hello, code, text string }{
		{`{"type":"HELLO","instanceId":"self-1"}`, "invalid", "own id"},
		{`{"type":"HELLO","role":"client"}`, "invalid", "instanceId is required"},
		{`{"type":"HELLO","instanceId":"x","role":"boss"}`, "invalid", "role"},
		{`{"type":"HELLO","instanceId":"x","protocol":2}`, "unsupported", "protocol version 2"},
	} {
		c := h.dial("")
		eph := h.onlyLink()
		send(t, c, tt.hello)
		if m := wantErr(t, c, tt.code); !strings.Contains(fmt.Sprint(m["error"]), tt.text) {
			t.Errorf("ERR for %s = %v, want it to mention %q", tt.hello, m, tt.text)
		}
		// The connection stays open, on its ephemeral link.
		send(t, c, sk)
		if e := h.next(); e.From.ID() != eph.ID() {
			t.Errorf("emitted from %s, want %s", e.From.ID(), eph.ID())
		}
		c.Close()
		testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
			if n := len(h.links.All()); n != 0 {
				return fmt.Errorf("%d links left", n)
			}
			return nil
		})
	}
}

func TestQueryStringIdentity(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, nil)
	defer h.close()
	c := h.dial("id=pi-2&tags=aws,%20production&acks=false")
	defer c.Close()

	l := h.linkState("pi-2", true)
	if !l.Durable() || l.Acks() || l.IsPeer() || !slices.Equal(l.Tags(), []string{"aws", "production"}) {
		t.Fatalf("link pi-2: durable=%v acks=%v peer=%v tags=%v", l.Durable(), l.Acks(), l.IsPeer(), l.Tags())
	}
	send(t, c, sk)
	if e := h.next(); e.From.ID() != "pi-2" || e.Received.IsZero() {
		t.Fatalf("emitted from %s at %v", e.From.ID(), e.Received)
	}
	// A durable link stays known when its connection goes.
	c.Close()
	h.linkState("pi-2", false)

	for _, q := range []string{"id=self-1", "acks=maybe", "id=" + strings.Repeat("x", 200)} {
		_, resp, err := websocket.DefaultDialer.Dial(h.url(q), nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
			t.Errorf("dial ?%s: err=%v, want HTTP 400", q, err)
		}
		if resp != nil {
			resp.Body.Close()
		}
	}
	resp, err := http.Get("http://" + h.srv.Addr().String() + "/other")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /other = %d, want 404", resp.StatusCode)
	}
	http.DefaultClient.CloseIdleConnections()
}

func TestDefaultTagsAndEphemeralLink(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, nil)
	defer h.close()
	c := h.dial("")
	send(t, c, sk)
	e := h.next()
	if !strings.HasPrefix(e.From.ID(), "con-") || !slices.Equal(e.From.Tags(), []string{"local"}) {
		t.Fatalf("emitted from %s with tags %v", e.From.ID(), e.From.Tags())
	}
	c.Close()
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if h.links.Get(e.From.ID()) != nil {
			return errors.New("the ephemeral link outlived its connection")
		}
		return nil
	})
}

func TestBadFramesAnsweredAndConnectionKept(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, func(c *ServerConfig) { c.MaxFrame = 1024 })
	defer h.close()
	c := h.dial("id=pi-3")
	defer c.Close()

	if err := c.WriteMessage(websocket.BinaryMessage, []byte(sk)); err != nil {
		t.Fatal(err)
	}
	if m := wantErr(t, c, "unsupported"); !strings.Contains(fmt.Sprint(m["error"]), "binary frames") {
		t.Errorf("ERR = %v", m)
	}
	send(t, c, `{"type":"SK","messageId":"big","key":"k","value":"`+strings.Repeat("x", 5000)+`"}`)
	wantErr(t, c, "too_large")
	send(t, c, sk)
	if e := h.next(); string(e.Raw) != sk {
		t.Fatalf("emitted %q, want %q", e.Raw, sk)
	}

	// Beyond 16 x max_frame the connection is closed with 1009.
	send(t, c, strings.Repeat("x", 17*1024))
	_ = c.SetReadDeadline(time.Now().Add(wait))
	_, _, err := c.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseMessageTooBig) {
		t.Fatalf("read after a huge frame: %v, want close 1009", err)
	}
	h.linkState("pi-3", false)
}

func TestTooManyBadFramesClose(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, nil)
	defer h.close()
	c := h.dial("id=pi-4")
	defer c.Close()
	for range maxBadFrames + 1 {
		if err := c.WriteMessage(websocket.BinaryMessage, []byte("x")); err != nil {
			break
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	for {
		if _, _, err := c.ReadMessage(); err != nil {
			if !websocket.IsCloseError(err, websocket.ClosePolicyViolation) {
				t.Fatalf("read: %v, want close 1008", err)
			}
			break
		}
	}
	h.linkState("pi-4", false)
}

func TestSilentClientClosedAfterHeartbeatTimeout(t *testing.T) {
	defer goleak.VerifyNone(t)
	const timeout = 200 * time.Millisecond
	h := newHarness(t, func(c *ServerConfig) {
		c.Heartbeat = HeartbeatConfig{Interval: 50 * time.Millisecond, Timeout: timeout}
	})
	defer h.close()

	// A client that reads answers pings and stays.
	live := h.dial("id=live")
	defer live.Close()
	go func() {
		for {
			if _, _, err := live.ReadMessage(); err != nil {
				return
			}
		}
	}()
	// A client that never reads sends no pongs.
	silent := h.dial("id=silent")
	defer silent.Close()
	start := time.Now()
	h.linkState("silent", true)
	h.linkState("silent", false)
	if d := time.Since(start); d < timeout/2 {
		t.Errorf("closed after %s, before the timeout of %s", d, timeout)
	}
	testutil.CheckFor(t, wait, 10*time.Millisecond, func() error {
		if !h.links.Get("live").Connected() {
			t.Fatal("a client that answers pings was closed")
		}
		if time.Since(start) < 3*timeout {
			return errors.New("still watching")
		}
		return nil
	})
}

func TestSendControlNeverBlocks(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, nil)
	defer h.close()
	c := h.dial("id=slow") // never reads
	defer c.Close()
	l := h.linkState("slow", true)
	conn := l.Conn()

	big := []byte(`{"type":"ACK","messageId":"` + strings.Repeat("x", 64<<10) + `"}`)
	start := time.Now()
	refused := false
	for i := 0; i < 100_000 && !refused; i++ {
		refused = !conn.SendControl(big)
	}
	if !refused {
		t.Fatal("SendControl kept accepting frames nobody reads")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("SendControl blocked: %s", d)
	}
	select {
	case <-conn.Done():
	case <-time.After(wait):
		t.Fatal("a slow consumer was not closed")
	}
	h.linkState("slow", false)
}

func TestShutdownStopsReadingKeepsWriting(t *testing.T) {
	defer goleak.VerifyNone(t)
	h := newHarness(t, nil)
	defer h.close()

	var clients []*websocket.Conn
	for i := range 3 {
		c := h.dial(fmt.Sprintf("id=pi-%d", i))
		defer c.Close()
		clients = append(clients, c)
		send(t, c, sk)
		h.next()
	}
	if err := h.stop(); err != nil {
		t.Fatalf("Run returned %v", err)
	}
	// Reading stopped, but the links keep their connections for ACKs.
	for i, c := range clients {
		l := h.links.Get(fmt.Sprintf("pi-%d", i))
		if !l.Connected() || !l.SendControl([]byte(`{"type":"ACK","messageId":"m1"}`)) {
			t.Fatalf("link %s lost its connection at shutdown", l.ID())
		}
		if m := readJSON(t, c); m["type"] != "ACK" {
			t.Fatalf("client %d got %v, want the ACK", i, m)
		}
	}
	if _, _, err := websocket.DefaultDialer.Dial(h.url(""), nil); err == nil {
		t.Fatal("a new connection was accepted after shutdown")
	}
	// Close ends the connections with 1001.
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() {
			_ = c.SetReadDeadline(time.Now().Add(wait))
			if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
				t.Errorf("client read after Close: %v, want close 1001", err)
			}
		})
	}
	h.srv.Close()
	wg.Wait()
}
