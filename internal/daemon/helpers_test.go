package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/daemon"
	"github.com/slipstream-sync/slipstream/pipeline"
	_ "github.com/slipstream-sync/slipstream/sinks"
	_ "github.com/slipstream-sync/slipstream/sources"
	_ "github.com/slipstream-sync/slipstream/stages"
)

// instanceHCL is the default pipeline on ephemeral loopback ports.
func instanceHCL(id, dataDir, extra string) string {
	return fmt.Sprintf(`
instance {
  id       = %q
  tags     = ["local"]
  data_dir = %q
}
admin {
  listen = "127.0.0.1:0"
}
log {
  level = "warn"
}
source "websocket_server" "ingress" {
  listen       = "127.0.0.1:0"
  default_tags = ["local"]
  %s
}
pipeline "sync" {
  sources = [source.websocket_server.ingress]
  stage "decode" {}
  stage "loop_check" {}
  stage "dedup" {
    window = "1h"
  }
  stage "tag_filter" {}
  stage "persist" {}
  stage "ack" {}
  stage "fanout" {}
  sinks = [sink.websocket.links]
}
sink "websocket" "links" {
  ack_timeout  = "300ms"
  max_attempts = 5
}
`, id, dataDir, extra)
}

// testInstance is a running in-process instance.
type testInstance struct {
	*daemon.Instance
	url  string
	stop func()
	done chan error
}

func startInstance(t *testing.T, hcl string) *testInstance {
	t.Helper()
	return startInstanceWith(t, hcl, daemon.Options{})
}

func startInstanceWith(t *testing.T, hcl string, opts daemon.Options) *testInstance {
	t.Helper()
	cfg, diags := pipeline.Load("test.hcl", []byte(hcl))
	if diags.HasErrors() {
		t.Fatalf("config: %s", pipeline.FormatDiagnostics(diags))
	}
	in, err := daemon.New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx, context.Background()) }()
	addr := in.Source("websocket_server.ingress").(interface{ Addr() net.Addr }).Addr().String()
	ti := &testInstance{Instance: in, url: "ws://" + addr + "/ws", done: done}
	stopped := false
	ti.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("instance run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("instance did not stop within 15s")
		}
	}
	t.Cleanup(ti.stop)
	return ti
}

// wsClient is a raw protocol client: tests see every frame.
type wsClient struct {
	t    *testing.T
	conn *websocket.Conn
	in   chan []byte
}

func dial(t *testing.T, url string) *wsClient {
	t.Helper()
	conn, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	return newWSClient(t, conn)
}

// newWSClient reads conn's frames into a wsClient, closed at cleanup.
func newWSClient(t *testing.T, conn *websocket.Conn) *wsClient {
	c := &wsClient{t: t, conn: conn, in: make(chan []byte, 4096)}
	go func() {
		defer close(c.in)
		for {
			_, b, err := conn.ReadMessage()
			if err != nil {
				return
			}
			c.in <- b
		}
	}()
	t.Cleanup(func() { c.close() })
	return c
}

// hello dials and introduces itself as id.
func hello(t *testing.T, url, id string, tags ...string) *wsClient {
	c := dial(t, url)
	h := &slipstream.Message{Type: slipstream.TypeHELLO, Protocol: 1, InstanceID: id, Tags: tags, Role: slipstream.RoleClient}
	c.send(slipstream.Encode(h))
	if m := c.next(); m.Type != slipstream.TypeHELLO {
		t.Fatalf("answer to HELLO: %s, want HELLO", slipstream.Encode(m))
	}
	return c
}

func (c *wsClient) close() {
	_ = c.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
	_ = c.conn.Close()
	for range c.in {
	}
}

func (c *wsClient) send(frame []byte) {
	c.t.Helper()
	if err := c.conn.WriteMessage(websocket.TextMessage, frame); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *wsClient) sendString(s string) { c.t.Helper(); c.send([]byte(s)) }

// nextRaw returns the next frame, failing the test after 5s.
func (c *wsClient) nextRaw() []byte {
	c.t.Helper()
	select {
	case b, ok := <-c.in:
		if !ok {
			c.t.Fatal("connection closed while waiting for a frame")
		}
		return b
	case <-time.After(5 * time.Second):
		c.t.Fatal("no frame within 5s")
	}
	return nil
}

func (c *wsClient) next() *slipstream.Message {
	c.t.Helper()
	b := c.nextRaw()
	m, err := slipstream.Decode(b, slipstream.DefaultLimits())
	if err != nil {
		c.t.Fatalf("undecodable frame %q: %v", b, err)
	}
	return m
}

// expectNone fails if a frame arrives within d.
func (c *wsClient) expectNone(d time.Duration) {
	c.t.Helper()
	select {
	case b, ok := <-c.in:
		if ok {
			c.t.Fatalf("unexpected frame: %s", b)
		}
	case <-time.After(d):
	}
}

// ack acknowledges a delivered message.
func (c *wsClient) ack(m *slipstream.Message) {
	c.t.Helper()
	c.send(slipstream.Encode(&slipstream.Message{Type: slipstream.TypeACK, MessageID: m.MessageID, ClusterGroupID: m.ClusterGroupID}))
}

var errNotYet = errors.New("not yet")

func sk(id, key, value string, extra ...string) string {
	s := fmt.Sprintf(`{"type":"SK","messageId":%q,"key":%q,"value":%s`, id, key, value)
	for _, e := range extra {
		s += "," + e
	}
	return s + "}"
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
