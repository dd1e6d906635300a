package client_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/client"
)

// fakeInstance is a scripted WebSocket server: serve runs once per
// connection with the upgraded conn.
func fakeInstance(t *testing.T, serve func(ws *websocket.Conn)) string {
	t.Helper()
	var (
		mu     sync.Mutex
		closed bool
		wg     sync.WaitGroup
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if closed {
			mu.Unlock()
			http.Error(w, "closed", http.StatusServiceUnavailable)
			return
		}
		wg.Add(1)
		mu.Unlock()
		defer wg.Done()
		ws, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		serve(ws)
	}))
	t.Cleanup(func() {
		mu.Lock()
		closed = true
		mu.Unlock()
		srv.CloseClientConnections()
		srv.Close()
		wg.Wait()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
}

func readMsg(ws *websocket.Conn) (*slipstream.Message, error) {
	_, data, err := ws.ReadMessage()
	if err != nil {
		return nil, err
	}
	return slipstream.Decode(data, nil)
}

func TestDialHelloRefused(t *testing.T) {
	url := fakeInstance(t, func(ws *websocket.Conn) {
		m, err := readMsg(ws)
		if err != nil || m.Type != slipstream.TypeHELLO || m.InstanceID != "app-1" || m.Role != slipstream.RoleClient ||
			m.Protocol != slipstream.ProtocolVersion || m.Acks == nil || !*m.Acks {
			t.Errorf("first frame = %v, %v; want the client's HELLO", m, err)
		}
		ws.WriteMessage(websocket.TextMessage, slipstream.Encode(slipstream.NewErr("", slipstream.CodeForbidden, "id taken")))
		// and hang up at once: the ERR must still be what Dial reports
	})
	_, err := client.Dial(context.Background(), url, client.Options{ID: "app-1"})
	var refused *slipstream.Error
	if !errors.As(err, &refused) || refused.Code != slipstream.CodeForbidden || refused.Text != "id taken" {
		t.Fatalf("Dial = %v, want the ERR forbidden as *slipstream.Error", err)
	}
}

func TestDialHelloTimeout(t *testing.T) {
	url := fakeInstance(t, func(ws *websocket.Conn) {
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := client.Dial(ctx, url, client.Options{ID: "app-1"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial to a server that never answers HELLO = %v, want DeadlineExceeded", err)
	}
}

func TestDialNeedsIDForTagsAndAcks(t *testing.T) {
	no := false
	for _, o := range []client.Options{{Tags: []string{"a"}}, {Acks: &no}} {
		if _, err := client.Dial(context.Background(), "ws://127.0.0.1:1/ws", o); err == nil || !strings.Contains(err.Error(), "need Options.ID") {
			t.Errorf("Dial(%+v) = %v", o, err)
		}
	}
}

// TestAutoAckAndPipelining drives the client against a fake that ACKs every
// publish and sends a delivery for each, checking order, ACK matching and
// the client's ACKs of deliveries.
func TestAutoAckAndPipelining(t *testing.T) {
	const n = 2000
	acked := make(chan string, n)
	url := fakeInstance(t, func(ws *websocket.Conn) {
		var wmu sync.Mutex
		send := func(m *slipstream.Message) {
			wmu.Lock()
			defer wmu.Unlock()
			ws.WriteMessage(websocket.TextMessage, slipstream.Encode(m))
		}
		for {
			m, err := readMsg(ws)
			if err != nil {
				return
			}
			switch m.Type {
			case slipstream.TypeACK:
				acked <- m.MessageID
			case slipstream.TypeSK:
				send(slipstream.NewAck(m, "fake"))
				d := *m
				d.MessageID = "d-" + m.MessageID
				d.ClusterGroupID = "g"
				send(&d)
			}
		}
	})
	c := dial(t, url, client.Options{AutoAck: true, Buffer: n})

	var mu sync.Mutex
	done := map[string]bool{}
	var wg sync.WaitGroup
	ids := make([]string, n)
	for i := range n {
		m := sk("k", `1`)
		wg.Add(1)
		if err := c.PublishAsync(m, func(ack *slipstream.Message, err error) {
			defer wg.Done()
			mu.Lock()
			defer mu.Unlock()
			if err != nil || ack.MessageID != m.MessageID || done[m.MessageID] {
				t.Errorf("done(%v, %v) for %s (already done: %v)", ack, err, m.MessageID, done[m.MessageID])
			}
			done[m.MessageID] = true
		}); err != nil {
			t.Fatalf("PublishAsync: %v", err)
		}
		ids[i] = m.MessageID
	}
	wg.Wait()
	for i := range n {
		d := next(t, c)
		if d.Msg.MessageID != "d-"+ids[i] {
			t.Fatalf("delivery %d = %s, want d-%s", i, d.Msg.MessageID, ids[i])
		}
		if err := d.Ack(); err != nil { // already acked: a no-op
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for range n {
		select {
		case id := <-acked:
			if seen[id] {
				t.Fatalf("delivery %s ACKed twice", id)
			}
			seen[id] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of %d deliveries ACKed", len(seen), n)
		}
	}
}

func TestConnectionLossFailsPending(t *testing.T) {
	url := fakeInstance(t, func(ws *websocket.Conn) {
		readMsg(ws) // the publish; then hang up without an ACK
	})
	c := dial(t, url, client.Options{})
	_, err := publish(t, c, sk("k", `1`))
	var ce *client.ConnError
	if !errors.As(err, &ce) {
		t.Fatalf("Publish when the server hangs up = %v, want *ConnError", err)
	}
	<-c.Done()
	if _, ok := <-c.Deliveries(); ok {
		t.Fatal("Deliveries not closed after the connection ended")
	}
}

func TestPublishContextAndDuplicatePending(t *testing.T) {
	url := fakeInstance(t, func(ws *websocket.Conn) {
		for {
			if _, err := readMsg(ws); err != nil { // never ACK
				return
			}
		}
	})
	c := dial(t, url, client.Options{})
	m := sk("k", `1`)
	m.MessageID = "m-1"
	if err := c.PublishAsync(m, func(*slipstream.Message, error) {}); err != nil {
		t.Fatal(err)
	}
	if _, err := publish(t, c, m); !errors.Is(err, client.ErrPending) {
		t.Fatalf("second publish of a pending id = %v, want ErrPending", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Publish(ctx, sk("k", `2`)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish without an ACK = %v, want DeadlineExceeded", err)
	}
}

func TestPublishOnlyData(t *testing.T) {
	url := fakeInstance(t, func(ws *websocket.Conn) {
		for {
			if _, err := readMsg(ws); err != nil {
				return
			}
		}
	})
	c := dial(t, url, client.Options{})
	for _, typ := range []slipstream.Type{slipstream.TypeGK, slipstream.TypeACK, slipstream.TypeHELLO} {
		if _, err := publish(t, c, &slipstream.Message{Type: typ, Key: "k"}); err == nil || !strings.Contains(err.Error(), "use Send") {
			t.Errorf("Publish %s = %v, want a refusal naming Send", typ, err)
		}
	}
}
