package stages

import (
	"context"
	"errors"
	"slices"
	"testing"

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
