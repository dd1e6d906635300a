package stages

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// ackHarness builds the ack stage with links whose outboxes are recording
// fakes: aws-1 (a connected peer) and pi-1 (a connected client).
func ackHarness(t *testing.T) (pipeline.Stage, map[string]*fakeOutbox) {
	t.Helper()
	h := newHarness(t)
	outboxes := map[string]*fakeOutbox{}
	h.links.SetOutboxFactory(func(l *link.Link) link.Outbox {
		ob := &fakeOutbox{}
		outboxes[l.ID()] = ob
		return ob
	})
	h.attach(link.Spec{ID: "aws-1", Peer: true, Acks: true, Durable: true})
	h.attach(link.Spec{ID: "pi-1", Acks: true, Durable: true})
	return h.stage(`stage "ack" {}`), outboxes
}

// ack answers every data message that is stored, or found to be a duplicate
// or a loop, with exactly one ACK to the link it came from (copying messageId
// and clusterGroupId); a refused message gets none. Only Accepted messages
// travel on.
func TestAckData(t *testing.T) {
	st, _ := ackHarness(t)
	tests := []struct {
		name     string
		msg      string
		status   pipeline.Status
		wantAck  bool
		wantPass bool
	}{
		{"accepted SK", sk("m1", "cluster-1", "aws-1", selfID), pipeline.Accepted, true, true},
		{"accepted SA", `{"type":"SA","messageId":"m1","clusterGroupId":"cluster-1","key":"k","value":[]}`, pipeline.Accepted, true, true},
		{"accepted SW", `{"type":"SW","messageId":"m1","clusterGroupId":"cluster-1","key":"k","value":{"a":1}}`, pipeline.Accepted, true, true},
		{"accepted CMD", `{"type":"CMD","messageId":"m1","clusterGroupId":"cluster-1","command":"app.x"}`, pipeline.Accepted, true, true},
		{"duplicate: ACKed again, not delivered again", sk("m1", "cluster-1", "aws-1", selfID), pipeline.Duplicate, true, false},
		{"loop: ACKed so the sender stops retrying", sk("m1", "cluster-1", selfID, "aws-1"), pipeline.Loop, true, false},
		{"rejected: no ACK (decode answered ERR)", sk("m1", "cluster-1"), pipeline.Rejected, false, false},
		{"consumed: nothing", sk("m1", "cluster-1"), pipeline.Consumed, false, false},
		{"GK request: not acknowledged, passed to state", `{"type":"GK","messageId":"m1","clusterGroupId":"cluster-1","key":"k"}`, pipeline.Accepted, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			from := peer("aws-1")
			e := withStatus(decoded(t, from, tc.msg), tc.status)

			out := process(t, st, e)

			if passed := len(out) == 1 && out[0] == e; passed != tc.wantPass || (!tc.wantPass && len(out) != 0) {
				t.Errorf("passed on %d envelopes; want passed=%v", len(out), tc.wantPass)
			}
			replies := from.Replies()
			if !tc.wantAck {
				if len(replies) != 0 {
					t.Errorf("replies %v, want none", replies)
				}
				return
			}
			if len(replies) != 1 {
				t.Fatalf("got %d replies, want exactly one ACK", len(replies))
			}
			want := `{"type":"ACK","messageId":"m1","originInstanceId":"self-1","sourceInstanceId":"self-1","clusterGroupId":"cluster-1","messagePath":["self-1"]}`
			if got := string(slipstream.Encode(replies[0])); got != want {
				t.Errorf("ACK = %s\nwant  %s", got, want)
			}
		})
	}
}

// An internally made data message (no link) is passed on without an ACK.
func TestAckWithoutOrigin(t *testing.T) {
	st, _ := ackHarness(t)
	e := decoded(t, nil, sk("m1", cluster, selfID))
	if out := process(t, st, e); len(out) != 1 || out[0] != e {
		t.Errorf("passed on %d envelopes, want the message", len(out))
	}
}

// An incoming ACK completes a delivery: the link's outbox hears Acked(cluster,
// id). An incoming ERR refuses one: Refused(id, code, reason). Both are
// consumed here, never forwarded and never acknowledged.
func TestAckFeedback(t *testing.T) {
	tests := []struct {
		name string
		from pipeline.Origin
		msg  string
		want map[string][]string // outbox calls per link
	}{
		{"ACK from a peer", peer("aws-1"),
			`{"type":"ACK","messageId":"m9","clusterGroupId":"cg","originInstanceId":"aws-1","sourceInstanceId":"aws-1","messagePath":["aws-1"]}`,
			map[string][]string{"aws-1": {"acked cg/m9"}}},
		{"ACK from a client without cluster", client("pi-1"), `{"type":"ACK","messageId":"m9"}`,
			map[string][]string{"pi-1": {"acked /m9"}}},
		{"ERR from a client", client("pi-1"), `{"type":"ERR","messageId":"m9","code":"invalid","error":"SA value must be an array"}`,
			map[string][]string{"pi-1": {"refused m9 invalid: SA value must be an array"}}},
		{"ERR without messageId", peer("aws-1"), `{"type":"ERR","code":"overloaded","error":"slow down"}`,
			map[string][]string{"aws-1": {"refused  overloaded: slow down"}}},
		{"ACK from an unknown link is dropped", peer("gone-1"), `{"type":"ACK","messageId":"m9","clusterGroupId":"cg"}`, nil},
		{"ACK made internally is dropped", nil, `{"type":"ACK","messageId":"m9","clusterGroupId":"cg"}`, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, outboxes := ackHarness(t)
			e := decoded(t, tc.from, tc.msg)

			out := process(t, st, e)

			if len(out) != 0 {
				t.Errorf("passed on %d envelopes; ACK and ERR stop here", len(out))
			}
			if e.Status != pipeline.Consumed {
				t.Errorf("status = %v, want consumed", e.Status)
			}
			if o, ok := tc.from.(*fakeOrigin); ok && len(o.Replies()) != 0 {
				t.Errorf("replied %v; ACK and ERR are never acknowledged", o.Replies())
			}
			for id, ob := range outboxes {
				if got := ob.Calls(); !slices.Equal(got, tc.want[id]) {
					t.Errorf("outbox of %s got %q, want %q", id, got, tc.want[id])
				}
			}
		})
	}
}

// A mixed batch: the ACKs go out in order, the outbox feedback is handed
// over, and only the Accepted data travel on, in order.
func TestAckMixedBatch(t *testing.T) {
	st, outboxes := ackHarness(t)
	aws, pi := peer("aws-1"), client("pi-1")
	batch := []*pipeline.Envelope{
		decoded(t, aws, `{"type":"ACK","messageId":"d1","clusterGroupId":"cg"}`),
		decoded(t, pi, sk("a", cluster, selfID)),
		withStatus(decoded(t, aws, sk("b", cluster, "aws-1", selfID)), pipeline.Duplicate),
		withStatus(decoded(t, pi, sk("c", cluster)), pipeline.Rejected),
		decoded(t, aws, sk("d", cluster, "aws-1", selfID)),
		decoded(t, pi, `{"type":"ERR","messageId":"d2","code":"invalid","error":"no"}`),
		withStatus(decoded(t, aws, sk("e", cluster, selfID)), pipeline.Loop),
		decoded(t, pi, sk("f", cluster, selfID)),
	}
	keep := []*pipeline.Envelope{batch[1], batch[4], batch[7]}

	out := process(t, st, batch...)

	if !slices.Equal(out, keep) {
		t.Errorf("passed on %d envelopes, want a, d, f in order", len(out))
	}
	ids := func(o *fakeOrigin) []string {
		var s []string
		for _, r := range o.Replies() {
			s = append(s, string(r.Type)+" "+r.MessageID)
		}
		return s
	}
	if got, want := ids(aws), []string{"ACK b", "ACK d", "ACK e"}; !slices.Equal(got, want) {
		t.Errorf("replies to aws-1 = %q, want %q", got, want)
	}
	if got, want := ids(pi), []string{"ACK a", "ACK f"}; !slices.Equal(got, want) {
		t.Errorf("replies to pi-1 = %q, want %q", got, want)
	}
	if got := outboxes["aws-1"].Calls(); !slices.Equal(got, []string{"acked cg/d1"}) {
		t.Errorf("aws-1 outbox got %q", got)
	}
	if got := outboxes["pi-1"].Calls(); !slices.Equal(got, []string{"refused d2 invalid: no"}) {
		t.Errorf("pi-1 outbox got %q", got)
	}
}

// ack filters its batch in place (the runner hands every stage its own copy):
// under the runner, an ACK frame that precedes a data message in a batch is
// still counted as consumed. The first envelope's Reply holds the stage until
// the rest are queued, so the second batch is exactly [ACK, SK].
func TestAckOutcomesCountedByRunner(t *testing.T) {
	st, _ := ackHarness(t)
	inside, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	gate := client("pi-0")
	gate.ReplyFunc = func(*slipstream.Message) {
		once.Do(func() { close(inside); <-release })
	}
	first := decoded(t, gate, sk("first", cluster, selfID))
	ackFrame := decoded(t, peer("aws-1"), `{"type":"ACK","messageId":"d1","clusterGroupId":"cg"}`)
	data := decoded(t, client("pi-1"), sk("a", cluster, selfID))

	reg := prometheus.NewRegistry()
	r := &pipeline.Runner{
		Name: "main",
		Sources: []pipeline.NamedSource{{Ref: "test.src", Source: sourceFunc(func(ctx context.Context, emit func(*pipeline.Envelope) bool) error {
			emit(first)
			<-inside // the stage is processing [first] alone
			emit(ackFrame)
			emit(data)
			close(release)
			return nil
		})}},
		Stages:  []pipeline.NamedStage{{Kind: "ack", Stage: st}},
		Metrics: pipeline.NewMetrics(reg),
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := r.Run(ctx, context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := counterValue(t, r.Metrics.Messages.WithLabelValues("main", "ack", "consumed")); got != 1 {
		t.Errorf("consumed = %v, want 1 (the ACK frame)", got)
	}
	if got := counterValue(t, r.Metrics.Messages.WithLabelValues("main", "ack", "passed")); got != 2 {
		t.Errorf("passed = %v, want 2", got)
	}
}

// sourceFunc is a pipeline.Source made of a function.
type sourceFunc func(ctx context.Context, emit func(*pipeline.Envelope) bool) error

func (f sourceFunc) Run(ctx context.Context, emit func(*pipeline.Envelope) bool) error {
	return f(ctx, emit)
}

// counterValue reads a counter.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
