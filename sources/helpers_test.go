package sources

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/testutil"
	"github.com/slipstream-sync/slipstream/pipeline"
)

const (
	self = "self-1"
	wait = 10 * time.Second
)

// harness runs a websocket_server source, built through its kind, on
// 127.0.0.1:0 with a real store and link registry. Close it with defer
// (before goleak's check runs).
type harness struct {
	t       *testing.T
	st      *store.Store
	links   *link.Registry
	srv     *Server
	envs    chan *pipeline.Envelope
	cancel  context.CancelFunc
	runDone chan error
	stopped bool
}

func newHarness(t *testing.T, mut func(*ServerConfig)) *harness {
	t.Helper()
	return newHarnessAt(t, t.TempDir(), mut)
}

// newHarnessAt is newHarness on the store in dir.
func newHarnessAt(t *testing.T, dir string, mut func(*ServerConfig)) *harness {
	t.Helper()
	st, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	links, err := link.NewRegistry(st, self, log)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	kind, ok := pipeline.Lookup(pipeline.ClassSource, "websocket_server")
	if !ok {
		t.Fatal("websocket_server kind not registered")
	}
	cfg := kind.NewConfig().(*ServerConfig)
	cfg.Listen = "127.0.0.1:0"
	cfg.DefaultTags = []string{"local"}
	if mut != nil {
		mut(cfg)
	}
	part, err := kind.Build(cfg, &pipeline.BuildContext{
		Instance: pipeline.Instance{ID: self, ClusterGroup: "c1", Tags: []string{"home"}},
		Name:     "ingress",
		Store:    st,
		Links:    links,
		Logger:   log,
		Metrics:  prometheus.NewRegistry(),
		Tracer:   noop.NewTracerProvider().Tracer("test"),
	})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	h := &harness{t: t, st: st, links: links, srv: part.(*Server),
		envs: make(chan *pipeline.Envelope, 100), runDone: make(chan error, 1)}
	if err := h.srv.Start(context.Background()); err != nil {
		h.srv.Close()
		st.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	emit := func(e *pipeline.Envelope) bool {
		select {
		case h.envs <- e:
			return true
		case <-ctx.Done():
			return false
		}
	}
	go func() { h.runDone <- h.srv.Run(ctx, emit) }()
	return h
}

// stop cancels Run and returns its result.
func (h *harness) stop() error {
	h.t.Helper()
	if h.stopped {
		return nil
	}
	h.stopped = true
	h.cancel()
	select {
	case err := <-h.runDone:
		return err
	case <-time.After(wait):
		h.t.Fatal("Run did not return after its context was cancelled")
		return nil
	}
}

func (h *harness) close() {
	_ = h.stop()
	h.srv.Close()
	h.links.Close()
	h.st.Close()
}

func (h *harness) url(query string) string {
	u := "ws://" + h.srv.Addr().String() + "/ws"
	if query != "" {
		u += "?" + query
	}
	return u
}

// dial opens a client connection; the caller closes it.
func (h *harness) dial(query string) *websocket.Conn {
	h.t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(h.url(query), nil)
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

// next returns the next emitted envelope.
func (h *harness) next() *pipeline.Envelope {
	h.t.Helper()
	select {
	case e := <-h.envs:
		return e
	case <-time.After(wait):
		h.t.Fatal("no envelope emitted")
		return nil
	}
}

// send writes a text frame from the client.
func send(t *testing.T, c *websocket.Conn, frame string) {
	t.Helper()
	if err := c.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
		t.Fatal(err)
	}
}

// readJSON reads the next frame the server sent to the client.
func readJSON(t *testing.T, c *websocket.Conn) map[string]any {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(wait))
	mt, b, err := c.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	if mt != websocket.TextMessage {
		t.Fatalf("server sent a frame of type %d", mt)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("server sent %q: %v", b, err)
	}
	return m
}

// wantErr reads an ERR frame with code.
func wantErr(t *testing.T, c *websocket.Conn, code string) map[string]any {
	t.Helper()
	m := readJSON(t, c)
	if m["type"] != "ERR" || m["code"] != code {
		t.Fatalf("got %v, want an ERR %s", m, code)
	}
	return m
}

// linkState waits until link id exists and is connected (or not).
func (h *harness) linkState(id string, connected bool) *link.Link {
	h.t.Helper()
	var l *link.Link
	testutil.CheckFor(h.t, wait, 5*time.Millisecond, func() error {
		l = h.links.Get(id)
		switch {
		case l == nil && connected:
			return fmt.Errorf("link %q does not exist", id)
		case l != nil && l.Connected() != connected:
			return fmt.Errorf("link %q connected = %v, want %v", id, l.Connected(), connected)
		}
		return nil
	})
	return l
}

// onlyLink waits until exactly one link exists and returns it.
func (h *harness) onlyLink() *link.Link {
	h.t.Helper()
	var l *link.Link
	testutil.CheckFor(h.t, wait, 5*time.Millisecond, func() error {
		all := h.links.All()
		if len(all) != 1 {
			return fmt.Errorf("%d links, want 1", len(all))
		}
		l = all[0]
		return nil
	})
	return l
}
