package stages

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/pipeline"
)

type ctxKey struct{}

// fanout hands each batch, in order and whole, to every sink of the
// pipeline, in the order the pipeline lists them; a sink's error fails the
// batch.
func TestFanout(t *testing.T) {
	boom := errors.New("redis: connection refused")
	tests := []struct {
		name      string
		sinks     int
		failing   int // index of the sink that fails, -1 for none
		wantErr   error
		wantCalls []int // batches delivered per sink
	}{
		{"no sinks: passed on", 0, -1, nil, nil},
		{"one sink", 1, -1, nil, []int{1}},
		{"three sinks", 3, -1, nil, []int{1, 1, 1}},
		{"first sink fails", 2, 0, boom, []int{1, 0}},
		{"last sink fails", 2, 1, boom, []int{1, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			sinks := make([]*fakeSink, tc.sinks)
			for i := range sinks {
				sinks[i] = &fakeSink{}
				if i == tc.failing {
					sinks[i].DeliverFunc = func(context.Context, []*pipeline.Envelope) error { return boom }
				}
				h.bc.Sinks = append(h.bc.Sinks, sinks[i])
			}
			st := h.stage(`stage "fanout" {}`)
			batch := []*pipeline.Envelope{
				routed(t, sk("a", cluster, selfID), "aws-1"),
				routed(t, sk("b", cluster, selfID)),
				routed(t, `{"type":"GK","messageId":"q","key":"k"}`),
				routed(t, sk("c", cluster, selfID), "aws-1", "gcp-1"),
			}
			ctx := context.WithValue(context.Background(), ctxKey{}, "run")

			out, err := st.Process(ctx, batch)

			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err != nil && out != nil {
				t.Errorf("a failed batch passed on %d envelopes", len(out))
			}
			if err == nil && !slices.Equal(out, batch) {
				t.Errorf("passed on %d envelopes, want the batch in order", len(out))
			}
			for i, s := range sinks {
				if len(s.batches) != tc.wantCalls[i] {
					t.Errorf("sink %d got %d batches, want %d", i, len(s.batches), tc.wantCalls[i])
					continue
				}
				for _, b := range s.batches {
					if !slices.Equal(b, batch) {
						t.Errorf("sink %d got a different batch or order", i)
					}
				}
			}
		})
	}
}

// Deliver gets the stage's context (the runner's hard-stop context), and one
// call per batch, in the order the batches come.
func TestFanoutPassesContextAndOrder(t *testing.T) {
	h := newHarness(t)
	var seen []any
	s := &fakeSink{DeliverFunc: func(ctx context.Context, _ []*pipeline.Envelope) error {
		seen = append(seen, ctx.Value(ctxKey{}))
		return nil
	}}
	h.bc.Sinks = []pipeline.Sink{s}
	st := h.stage(`stage "fanout" {}`)
	ctx := context.WithValue(context.Background(), ctxKey{}, "hard")
	b1 := []*pipeline.Envelope{routed(t, sk("a", cluster, selfID))}
	b2 := []*pipeline.Envelope{routed(t, sk("b", cluster, selfID)), routed(t, sk("c", cluster, selfID))}
	for _, b := range [][]*pipeline.Envelope{b1, b2} {
		if _, err := st.Process(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if len(s.batches) != 2 || !slices.Equal(s.batches[0], b1) || !slices.Equal(s.batches[1], b2) {
		t.Errorf("sink got %d batches, want b1 then b2", len(s.batches))
	}
	if !slices.Equal(seen, []any{"hard", "hard"}) {
		t.Errorf("contexts seen %v, want the stage's context each time", seen)
	}
}

// Requests and replies are never stored: fanout queues them on their
// recipients' live connections as forwarded (sourceInstanceId = this
// instance), and a reply chosen by tag_filter goes back over the link its
// request came in on.
func TestRequestsAndRepliesTravelHopByHop(t *testing.T) {
	h := newHarness(t)
	filter := h.stage(`stage "tag_filter" {
  request_timeout = "1m"
}`)
	fan := h.stage(`stage "fanout" {}`)
	awsConn := h.attach(link.Spec{ID: "aws-1", Tags: []string{"aws"}, Peer: true, Acks: true, Durable: true})
	azureConn := h.attach(link.Spec{ID: "azure-1", Tags: []string{"azure"}, Peer: true, Acks: true, Durable: true})
	piConn := h.attach(link.Spec{ID: "pi-1", Tags: []string{"local"}, Acks: true, Durable: true})
	pi := h.links.Get("pi-1")

	// A client asks for azure's value: forwarded to azure-1 only.
	req := decoded(t, pi, `{"type":"GK","messageId":"q1","originInstanceId":"pi-1","key":"k","targetedTags":["azure"],"messagePath":["self-1"]}`)
	process(t, fan, process(t, filter, req)...)
	if got := azureConn.frames(); len(got) != 1 || !strings.Contains(got[0], `"messageId":"q1"`) || !strings.Contains(got[0], `"sourceInstanceId":"self-1"`) {
		t.Fatalf("azure-1 got %q, want the request as forwarded", got)
	}
	if got := awsConn.frames(); len(got) != 0 {
		t.Fatalf("aws-1 got %q, want nothing (not targeted)", got)
	}
	if ob := h.outbox("azure-1"); len(ob) != 0 {
		t.Fatalf("request stored in an outbox: %v", ob)
	}

	// azure-1 answers: the reply goes to pi-1, the link q1 came in on.
	reply := decoded(t, h.links.Get("azure-1"), `{"type":"GK","messageId":"r1","inReplyTo":"q1","originInstanceId":"azure-1","key":"k","found":true,"value":7}`)
	process(t, fan, process(t, filter, reply)...)
	if got := piConn.frames(); len(got) != 1 || !strings.Contains(got[0], `"inReplyTo":"q1"`) || !strings.Contains(got[0], `"value":7`) {
		t.Fatalf("pi-1 got %q, want the reply", got)
	}

	// The same request arriving again from a peer (another way round the
	// mesh) is dropped; from a client it is refused: the id is in use.
	again := decoded(t, h.links.Get("aws-1"), `{"type":"GK","messageId":"q1","originInstanceId":"pi-1","key":"k","messagePath":["x-1","self-1"]}`)
	if out := process(t, filter, again); len(out) != 0 {
		t.Fatalf("a copy of a known request was passed on")
	}
	reused := decoded(t, client("pi-2"), `{"type":"GK","messageId":"q1","key":"k","messagePath":["self-1"]}`)
	process(t, filter, reused)
	if rs := reused.From.(*fakeOrigin).Replies(); reused.Status != pipeline.Rejected || len(rs) != 1 || rs[0].Code != slipstream.CodeInvalid {
		t.Fatalf("reused id: status %v replies %+v, want Rejected with ERR invalid", reused.Status, rs)
	}

	// A reply nobody here waits for is dropped.
	stray := decoded(t, h.links.Get("azure-1"), `{"type":"GK","messageId":"r2","inReplyTo":"unknown","key":"k","found":false}`)
	if out := process(t, filter, stray); len(out) != 0 {
		t.Fatalf("an unroutable reply was passed on")
	}

	// Replies to commands travel back the same way: a client's reply to an
	// application command reaches the instance the command came from.
	cmd := decoded(t, h.links.Get("aws-1"), `{"type":"CMD","messageId":"c1","originInstanceId":"ops","command":"reload","messagePath":["aws-1","self-1"]}`)
	process(t, filter, cmd)
	creply := decoded(t, pi, `{"type":"CMD","messageId":"r3","inReplyTo":"c1","result":"done"}`)
	process(t, fan, process(t, filter, creply)...)
	if got := awsConn.frames(); len(got) != 1 || !strings.Contains(got[0], `"inReplyTo":"c1"`) {
		t.Fatalf("aws-1 got %q, want the command's reply", got)
	}
}

// One link may have max_requests_per_link requests awaiting replies (ERR
// rate_limited beyond); with the whole table full, a new request is refused
// with ERR overloaded.
func TestRequestTableLimits(t *testing.T) {
	h := newHarness(t)
	filter := h.stage(`stage "tag_filter" {
  max_requests          = 3
  max_requests_per_link = 2
}`)
	ask := func(from, id string) (pipeline.Status, []*slipstream.Message) {
		o := client(from)
		e := decoded(t, o, `{"type":"GK","messageId":"`+id+`","key":"k"}`)
		process(t, filter, e)
		return e.Status, o.Replies()
	}
	for _, c := range []struct {
		from, id string
		code     string
	}{
		{"pi-1", "q1", ""}, {"pi-1", "q2", ""},
		{"pi-1", "q3", slipstream.CodeRateLimited}, // pi-1 has 2 awaiting
		{"pi-2", "q4", ""},
		{"pi-3", "q5", slipstream.CodeOverloaded}, // the table holds 3
	} {
		st, rs := ask(c.from, c.id)
		switch {
		case c.code == "" && (st != pipeline.Accepted || len(rs) != 0):
			t.Errorf("%s from %s: status %v replies %+v, want accepted", c.id, c.from, st, rs)
		case c.code != "" && (st != pipeline.Rejected || len(rs) != 1 || rs[0].Code != c.code):
			t.Errorf("%s from %s: status %v replies %+v, want ERR %s", c.id, c.from, st, rs, c.code)
		}
	}
}
