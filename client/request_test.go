package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/client"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// startStateInstance returns the URLs of its ingress (commands allowed) and
// locked listeners.
func startStateInstance(t *testing.T, id string, tags []string, peers string) (ingress, locked string, stop func()) {
	t.Helper()
	urls, stop := startInstanceSources(t, configHCL(t, id, id, tags, peers),
		"websocket_server.ingress", "websocket_server.locked")
	return urls[0], urls[1], stop
}

func within(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestGetTypedValues(t *testing.T) {
	url, _, _ := startStateInstance(t, "state-1", []string{"test"}, "")
	c := dial(t, url, client.Options{})
	for _, m := range []*slipstream.Message{
		sk("order:1", `{"status":"paid"}`),
		{Type: slipstream.TypeSA, Key: "acquirers", Value: json.RawMessage(`["a","b"]`)},
		{Type: slipstream.TypeSW, Key: "split", Value: json.RawMessage(`{"acq-a":70,"acq-b":30}`)},
		sk("gone", `1`),
		sk("gone", `null`),
	} {
		if _, err := publish(t, c, m); err != nil {
			t.Fatalf("publish %s %s: %v", m.Type, m.Key, err)
		}
	}

	v, found, err := c.Get(within(t, 10*time.Second), "order:1")
	if err != nil || !found || string(v) != `{"status":"paid"}` {
		t.Fatalf("Get order:1 = %s, %v, %v", v, found, err)
	}
	// GK reads any type.
	if v, found, err := c.Get(within(t, 10*time.Second), "split"); err != nil || !found || string(v) != `{"acq-a":70,"acq-b":30}` {
		t.Fatalf("Get split = %s, %v, %v", v, found, err)
	}
	a, found, err := c.GetArray(within(t, 10*time.Second), "acquirers")
	if err != nil || !found || len(a) != 2 || string(a[0]) != `"a"` || string(a[1]) != `"b"` {
		t.Fatalf("GetArray acquirers = %s, %v, %v", a, found, err)
	}
	w, found, err := c.GetWeighted(within(t, 10*time.Second), "split")
	if err != nil || !found || !reflect.DeepEqual(w, map[string]float64{"acq-a": 70, "acq-b": 30}) {
		t.Fatalf("GetWeighted split = %v, %v, %v", w, found, err)
	}

	// Missing and deleted keys are not found, without an error.
	for _, key := range []string{"never-set", "gone"} {
		if v, found, err := c.Get(within(t, 10*time.Second), key); err != nil || found || v != nil {
			t.Fatalf("Get %s = %s, %v, %v; want not found", key, v, found, err)
		}
	}
	// A type mismatch is the answering instance's error.
	_, _, err = c.GetArray(within(t, 10*time.Second), "order:1")
	var re *client.ReplyError
	if !errors.As(err, &re) || re.Instance != "state-1" || !strings.Contains(re.Text, "set by SK") {
		t.Fatalf("GetArray of an SK key: %v, want a ReplyError from state-1 naming SK", err)
	}

	// Replies are not deliveries: the next delivery is data.
	other := dial(t, url, client.Options{})
	if _, err := publish(t, other, &slipstream.Message{Type: slipstream.TypeSK, Key: "marker", Value: json.RawMessage(`1`), TargetedTags: []string{"anon"}}); err != nil {
		t.Fatal(err)
	}
	if d := next(t, c); d.Msg.Type != slipstream.TypeSK || d.Msg.Key != "marker" {
		t.Fatalf("first delivery of the requester is %s, want the marker SK", d.Raw)
	}
}

func TestRequestEveryReplyAndTimeout(t *testing.T) {
	// b dials a: an untargeted get on a is answered by both.
	aURL, _, _ := startStateInstance(t, "env-a", []string{"a"}, "")
	peer := fmt.Sprintf("  peer \"env-a\" {\n    url  = %q\n    tags = [\"a\"]\n  }", aURL)
	bURL, _, _ := startStateInstance(t, "env-b", []string{"b"}, peer)
	ca := dial(t, aURL, client.Options{})
	cb := dial(t, bURL, client.Options{})
	// a learns of b when b's link says HELLO: a message published before
	// that has no b among its recipients (docs/config.md, tag_filter). A
	// get from b answered by a travels back over that link, so a knows b.
	testutil.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, _, err := cb.Get(ctx, "shared", client.Targeting("a"))
		return err
	})
	if _, err := publish(t, ca, sk("shared", `"v1"`)); err != nil {
		t.Fatal(err)
	}
	// Wait for b to hold it.
	testutil.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		v, found, err := cb.Get(ctx, "shared", client.Targeting("b"))
		if err != nil || !found || string(v) != `"v1"` {
			return fmt.Errorf("b: %s %v %v", v, found, err)
		}
		return nil
	})

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	m := &slipstream.Message{Type: slipstream.TypeGK, Key: "shared"}
	r, err := ca.Request(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if m.MessageID == "" || r.ID() != m.MessageID || r.Ack() != nil {
		t.Fatalf("request id %q, replies id %q, ack %v", m.MessageID, r.ID(), r.Ack())
	}
	var from []string
	for {
		reply, err := r.Next()
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("replies ended with %v, want the deadline", err)
			}
			break
		}
		if reply.InReplyTo != m.MessageID || reply.Type != slipstream.TypeGK || string(reply.Value) != `"v1"` {
			t.Fatalf("reply %s", slipstream.Encode(reply))
		}
		from = append(from, reply.OriginInstanceID)
	}
	sort.Strings(from)
	if !reflect.DeepEqual(from, []string{"env-a", "env-b"}) {
		t.Fatalf("replies from %v, want one from each instance", from)
	}

	// A get nobody answers ends cleanly with the caller's deadline.
	start := time.Now()
	_, _, err = ca.Get(within(t, 300*time.Millisecond), "shared", client.Targeting("nowhere"))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `no reply to GK "shared"`) {
		t.Fatalf("unanswered get: %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("unanswered get returned after %s", time.Since(start))
	}
	if _, err := publish(t, ca, sk("after", `1`)); err != nil {
		t.Fatalf("the client is unusable after a request timed out: %v", err)
	}
}

func TestCommand(t *testing.T) {
	url, locked, _ := startStateInstance(t, "cmd-1", []string{"test"}, "")
	c := dial(t, url, client.Options{})
	res, err := c.Command(within(t, 10*time.Second), "slipstream.ping", nil)
	var pong struct {
		Pong       bool   `json:"pong"`
		InstanceID string `json:"instanceId"`
	}
	if err != nil || json.Unmarshal(res, &pong) != nil || !pong.Pong || pong.InstanceID != "cmd-1" {
		t.Fatalf("ping: %s, %v", res, err)
	}

	// A CMD request is acknowledged (it is data); the ACK is not a reply.
	m, err := client.NewCommand("slipstream.set_log_level", map[string]string{"level": "warn"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Request(within(t, 10*time.Second), m)
	if err != nil {
		t.Fatal(err)
	}
	if ack := r.Ack(); ack == nil || ack.Type != slipstream.TypeACK || ack.MessageID != m.MessageID {
		t.Fatalf("ACK of the command: %v", ack)
	}
	reply, err := r.Next()
	if err != nil || reply.InReplyTo != m.MessageID || reply.Type != slipstream.TypeCMD ||
		!strings.Contains(string(reply.Result), `"level":"warn"`) {
		t.Fatalf("set_log_level reply %v, %v", reply, err)
	}
	r.Close()
	if _, err := r.Next(); !errors.Is(err, client.ErrRequestClosed) {
		t.Fatalf("Next after Close: %v", err)
	}

	// A failing command is a ReplyError.
	_, err = c.Command(within(t, 10*time.Second), "slipstream.set_log_level", map[string]string{"level": "loud"})
	var re *client.ReplyError
	if !errors.As(err, &re) || re.Instance != "cmd-1" {
		t.Fatalf("bad level: %v, want a ReplyError", err)
	}

	// Without allow_commands: ERR forbidden, from Request itself.
	lc := dial(t, locked, client.Options{})
	_, err = lc.Command(within(t, 10*time.Second), "slipstream.set_log_level", json.RawMessage(`{"level":"debug"}`))
	var refused *slipstream.Error
	if !errors.As(err, &refused) || refused.Code != slipstream.CodeForbidden {
		t.Fatalf("command without permission: %v, want ERR forbidden", err)
	}
	if res, err := c.Command(within(t, 10*time.Second), "slipstream.set_log_level", map[string]string{"level": "info"}); err != nil ||
		!strings.Contains(string(res), `"previous":"warn"`) {
		t.Fatalf("the forbidden command changed the level: %s %v", res, err)
	}
}

func TestApplicationCommandReply(t *testing.T) {
	url, _, _ := startStateInstance(t, "app-1", []string{"test"}, "")
	worker := dial(t, url, client.Options{ID: "worker-1", Tags: []string{"workers"}})
	c := dial(t, url, client.Options{})

	ctx := within(t, 10*time.Second)
	m, _ := client.NewCommand("app.reload", map[string]bool{"full": true})
	client.Targeting("workers")(m)
	r, err := c.Request(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if r.Ack() == nil {
		t.Fatal("no ACK for an application command")
	}
	d := next(t, worker)
	if d.Msg.Command != "app.reload" || d.Msg.MessageID != m.MessageID || string(d.Msg.Args) != `{"full":true}` {
		t.Fatalf("worker got %s", d.Raw)
	}
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
	if err := worker.Reply(d.Msg, &slipstream.Message{Result: json.RawMessage(`{"reloaded":3}`)}); err != nil {
		t.Fatal(err)
	}
	reply, err := r.Next()
	if err != nil || reply.InReplyTo != m.MessageID || string(reply.Result) != `{"reloaded":3}` {
		t.Fatalf("reply %v, %v", reply, err)
	}
	r.Close()

	// A reply after the requester stopped listening is dropped, not
	// delivered: the requester's next delivery is the marker.
	if err := worker.Reply(d.Msg, &slipstream.Message{Result: json.RawMessage(`"late"`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := publish(t, worker, &slipstream.Message{Type: slipstream.TypeSK, Key: "marker", Value: json.RawMessage(`1`), TargetedTags: []string{"anon"}}); err != nil {
		t.Fatal(err)
	}
	if d := next(t, c); d.Msg.Key != "marker" {
		t.Fatalf("requester's next delivery is %s, want the marker", d.Raw)
	}
	if err := worker.Reply(sk("k", `1`), &slipstream.Message{}); err == nil {
		t.Fatal("Reply to an SK: no error")
	}
}

func TestRequestErrors(t *testing.T) {
	url, _, stop := startStateInstance(t, "err-1", []string{"test"}, "")
	c := dial(t, url, client.Options{})

	// A get the instance refuses ends with its ERR.
	_, _, err := c.Get(within(t, 10*time.Second), strings.Repeat("k", 2000))
	var refused *slipstream.Error
	if !errors.As(err, &refused) || refused.Code != slipstream.CodeInvalid {
		t.Fatalf("get with a too long key: %v, want ERR invalid", err)
	}
	if _, err := c.Request(within(t, time.Second), sk("k", `1`)); err == nil {
		t.Fatal("Request of an SK: no error")
	}
	if _, err := c.Request(within(t, time.Second), &slipstream.Message{Type: slipstream.TypeGK, Key: "k", InReplyTo: "x"}); err == nil {
		t.Fatal("Request of a reply: no error")
	}

	// One id, one request at a time.
	ctx := within(t, 10*time.Second)
	r, err := c.Request(ctx, &slipstream.Message{Type: slipstream.TypeGK, Key: "k", MessageID: "req-1", TargetedTags: []string{"nowhere"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Request(ctx, &slipstream.Message{Type: slipstream.TypeGK, Key: "k", MessageID: "req-1"}); !errors.Is(err, client.ErrPending) {
		t.Fatalf("second request with id req-1: %v, want ErrPending", err)
	}

	// The connection ends: the open request ends with its error.
	stop()
	if _, err := r.Next(); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request after the instance stopped: %v, want the connection's error", err)
	}
	var ce *client.ConnError
	if _, err := c.Request(within(t, time.Second), &slipstream.Message{Type: slipstream.TypeGK, Key: "k"}); !errors.As(err, &ce) {
		t.Fatalf("Request on a lost connection: %v, want a ConnError", err)
	}
}
