package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/client"
)

func dial(t *testing.T, url string, o client.Options) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, o)
	if err != nil {
		t.Fatalf("Dial %s: %v", o.ID, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func publish(t *testing.T, c *client.Client, m *slipstream.Message) (*slipstream.Message, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Publish(ctx, m)
}

// next returns the next delivery, failing the test after 10s.
func next(t *testing.T, c *client.Client) *client.Delivery {
	t.Helper()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case d, ok := <-c.Deliveries():
		if !ok {
			t.Fatalf("deliveries closed: %v", c.Err())
		}
		return d
	case <-timer.C:
		t.Fatal("no delivery within 10s")
	}
	return nil
}

func sk(key, value string) *slipstream.Message {
	return &slipstream.Message{Type: slipstream.TypeSK, Key: key, Value: json.RawMessage(value)}
}

func TestPublishGetsAck(t *testing.T) {
	url, _ := startInstance(t, instanceHCL(t, "inst-1"))
	c := dial(t, url, client.Options{})

	m := sk("order:1", `{"status":"paid"}`)
	ack, err := publish(t, c, m)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if m.MessageID == "" {
		t.Fatal("Publish did not assign a messageId")
	}
	if ack.Type != slipstream.TypeACK || ack.MessageID != m.MessageID || ack.ClusterGroupID != "test-group" {
		t.Fatalf("ACK = %s, want an ACK of %s in test-group", slipstream.Encode(ack), m.MessageID)
	}

	// A message with its own id is acknowledged with that id, and so is
	// its retransmission (a duplicate).
	for range 2 {
		m := sk("order:2", `1`)
		m.MessageID = "client-chosen-1"
		ack, err := publish(t, c, m)
		if err != nil || ack.MessageID != "client-chosen-1" {
			t.Fatalf("Publish with an id: ack %v, err %v", ack, err)
		}
	}
}

func TestHelloIdentifiesBothSides(t *testing.T) {
	url, _ := startInstance(t, instanceHCL(t, "inst-1"))
	c := dial(t, url, client.Options{ID: "app-1", Tags: []string{"a"}})
	h := c.Hello()
	if h == nil || h.Type != slipstream.TypeHELLO || h.InstanceID != "inst-1" || h.ClusterGroupID != "test-group" {
		t.Fatalf("server HELLO = %v", h)
	}
	anon := dial(t, url, client.Options{})
	if anon.Hello() != nil {
		t.Fatalf("an anonymous client sent no HELLO but got %v", anon.Hello())
	}
}

func TestDeliveryExactlyOnceKeepsUnknownFields(t *testing.T) {
	url, _ := startInstance(t, instanceHCL(t, "inst-1"))
	a := dial(t, url, client.Options{ID: "app-a", AutoAck: true})
	// Dial returns once the instance answered HELLO, which it does only when
	// app-b is a recipient: what a publishes from now on reaches b.
	b := dial(t, url, client.Options{ID: "app-b"})

	const unknown = `{ "a" : [1, 2.50e3 ]}`
	m := sk("order:7", `{"status":"paid"}`)
	m.Extra = []slipstream.Field{{Name: "x", Value: json.RawMessage(unknown)}}
	if _, err := publish(t, a, m); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	// The same message again (a retransmission): ACKed, not delivered again.
	again := *m
	if _, err := publish(t, a, &again); err != nil {
		t.Fatalf("Publish again: %v", err)
	}
	sentinel := sk("order:8", `null`)
	if _, err := publish(t, a, sentinel); err != nil {
		t.Fatalf("Publish sentinel: %v", err)
	}

	d := next(t, b)
	if d.Msg.MessageID != m.MessageID || d.Msg.Key != "order:7" {
		t.Fatalf("first delivery = %s, want %s", d.Raw, m.MessageID)
	}
	if want := `"x":` + unknown; !bytes.Contains(d.Raw, []byte(want)) {
		t.Errorf("delivered frame %s lacks %s byte for byte", d.Raw, want)
	}
	if len(d.Msg.Extra) != 1 || d.Msg.Extra[0].Name != "x" || string(d.Msg.Extra[0].Value) != unknown {
		t.Errorf("delivered Extra = %+v", d.Msg.Extra)
	}
	if d.Msg.OriginInstanceID != "app-a" || d.Msg.SourceInstanceID != "inst-1" || !d.Msg.InPath("inst-1") {
		t.Errorf("delivered routing fields: origin %q source %q path %v", d.Msg.OriginInstanceID, d.Msg.SourceInstanceID, d.Msg.MessagePath)
	}
	if err := d.Ack(); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	// Deliveries to one link are in order: a second copy of m would come
	// before the sentinel.
	if d := next(t, b); d.Msg.MessageID != sentinel.MessageID {
		t.Fatalf("second delivery = %s, want the sentinel %s", d.Raw, sentinel.MessageID)
	}
	if string(d.Msg.Value) != `{"status":"paid"}` {
		t.Errorf("value = %s", d.Msg.Value)
	}
}

func TestPublishRefusedIsTypedError(t *testing.T) {
	url, _ := startInstance(t, instanceHCL(t, "inst-1"))
	c := dial(t, url, client.Options{})

	m := &slipstream.Message{Type: slipstream.TypeSA, Key: "list", Value: json.RawMessage(`{"not":"an array"}`)}
	ack, err := publish(t, c, m)
	var refused *slipstream.Error
	if !errors.As(err, &refused) {
		t.Fatalf("Publish SA with an object: ack %v, err %v (%T), want *slipstream.Error", ack, err, err)
	}
	if refused.Code != slipstream.CodeInvalid || refused.MessageID != m.MessageID || refused.Text == "" {
		t.Fatalf("refusal = %+v, want code invalid for %s", refused, m.MessageID)
	}
	// The connection stays usable.
	if _, err := publish(t, c, sk("k", `1`)); err != nil {
		t.Fatalf("Publish after a refusal: %v", err)
	}
}

func TestBadFramesGoToErrors(t *testing.T) {
	url, _ := startInstance(t, instanceHCL(t, "inst-1"))
	c := dial(t, url, client.Options{})
	for _, tc := range []struct {
		frame  string
		binary bool
		code   string
	}{
		{`{"type":"SK",`, false, slipstream.CodeBadJSON},
		{`{"type":"SK","key":"k","value":1}`, true, ""}, // binary: refused, code left to the instance
		{`{"type":"NOPE","messageId":"m-x"}`, false, slipstream.CodeUnsupported},
	} {
		if err := c.SendRaw([]byte(tc.frame), tc.binary); err != nil {
			t.Fatalf("SendRaw: %v", err)
		}
		timer := time.NewTimer(10 * time.Second)
		select {
		case e := <-c.Errors():
			if e.Type != slipstream.TypeERR || (tc.code != "" && e.Code != tc.code) {
				t.Errorf("frame %s: got %s, want ERR %s", tc.frame, slipstream.Encode(e), tc.code)
			}
		case <-timer.C:
			t.Fatalf("frame %s: no ERR within 10s", tc.frame)
		}
		timer.Stop()
	}
}

func TestCloseFailsPendingAndIsIdempotent(t *testing.T) {
	url, _ := startInstance(t, instanceHCL(t, "inst-1"))
	c := dial(t, url, client.Options{})

	results := make(chan error, 100)
	for i := range 100 {
		if err := c.PublishAsync(sk(fmt.Sprint("k", i), `1`), func(_ *slipstream.Message, err error) {
			results <- err
		}); err != nil {
			t.Fatalf("PublishAsync: %v", err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for range 100 { // every done is called once: ACKed, or failed by Close
		if err := <-results; err != nil && !errors.Is(err, client.ErrClosed) {
			t.Fatalf("pending publish failed with %v, want nil or ErrClosed", err)
		}
	}
	if _, err := publish(t, c, sk("k", `1`)); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Publish after Close = %v, want ErrClosed", err)
	}
	if _, ok := <-c.Deliveries(); ok {
		t.Fatal("Deliveries not closed after Close")
	}
}

func TestInstanceStopEndsClient(t *testing.T) {
	url, stop := startInstance(t, instanceHCL(t, "inst-1"))
	c := dial(t, url, client.Options{ID: "app-1"})
	stop()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("client not done 10s after the instance stopped")
	}
	var ce *client.ConnError
	if !errors.As(c.Err(), &ce) {
		t.Fatalf("Err() = %v, want a *ConnError", c.Err())
	}
	if _, err := publish(t, c, sk("k", `1`)); !errors.As(err, &ce) {
		t.Fatalf("Publish on a dead connection = %v", err)
	}
}
