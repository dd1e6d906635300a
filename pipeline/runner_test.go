package pipeline

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"
)

type stageFunc func(ctx context.Context, batch []*Envelope) ([]*Envelope, error)

func (f stageFunc) Process(ctx context.Context, batch []*Envelope) ([]*Envelope, error) {
	return f(ctx, batch)
}

type sourceFunc func(ctx context.Context, emit func(*Envelope) bool) error

func (f sourceFunc) Run(ctx context.Context, emit func(*Envelope) bool) error { return f(ctx, emit) }

// dropEvery returns a stage that drops (filtering in place) the envelopes
// whose index i satisfies i%n == k.
func dropEvery(n, k int) Stage {
	return stageFunc(func(_ context.Context, batch []*Envelope) ([]*Envelope, error) {
		out := batch[:0]
		for _, e := range batch {
			if e.Raw[0]%byte(n) == byte(k) {
				continue
			}
			out = append(out, e)
		}
		return out, nil
	})
}

// Every envelope leaves the pipeline exactly once, whichever stage drops it,
// and the runner stops with no goroutine left behind.
func TestRunnerCallsDoneOnceForEveryEnvelope(t *testing.T) {
	defer goleak.VerifyNone(t)
	const n = 5000
	var done, twice atomic.Int64
	seen := make([]atomic.Int32, n)
	failBatches := atomic.Int64{}
	src := sourceFunc(func(ctx context.Context, emit func(*Envelope) bool) error {
		for i := range n {
			e := &Envelope{Raw: []byte{byte(i % 251)}}
			e.Done = func() {
				if seen[i].Add(1) > 1 {
					twice.Add(1)
				}
				done.Add(1)
			}
			if !emit(e) {
				return nil
			}
		}
		return nil
	})
	failing := stageFunc(func(_ context.Context, batch []*Envelope) ([]*Envelope, error) {
		if failBatches.Add(1)%7 == 0 {
			return nil, errors.New("this batch fails")
		}
		return batch, nil
	})
	r := &Runner{
		Name:    "p",
		Sources: []NamedSource{{Ref: "t.src", Source: src}},
		Stages: []NamedStage{
			{Kind: "a", Stage: dropEvery(3, 0)},
			{Kind: "b", Stage: failing},
			{Kind: "c", Stage: dropEvery(5, 1)},
			{Kind: "d", Stage: dropEvery(7, 2)},
		},
		MaxBatch: 16,
	}
	if err := r.Run(context.Background(), context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := done.Load(); got != n || twice.Load() != 0 {
		t.Fatalf("Done called %d times for %d envelopes (%d twice)", got, n, twice.Load())
	}
}

// A hard stop ends a stuck stage's pipeline at once; the source's emit
// returns false and Run returns.
func TestRunnerHardStop(t *testing.T) {
	defer goleak.VerifyNone(t)
	hard, stopHard := context.WithCancel(context.Background())
	defer stopHard()
	entered := make(chan struct{})
	var once atomic.Bool
	src := sourceFunc(func(ctx context.Context, emit func(*Envelope) bool) error {
		for {
			if !emit(&Envelope{Raw: []byte{1}}) {
				return nil
			}
		}
	})
	stuck := stageFunc(func(ctx context.Context, batch []*Envelope) ([]*Envelope, error) {
		if once.CompareAndSwap(false, true) {
			close(entered)
		}
		<-ctx.Done() // the stage gets the hard-stop context
		return batch, nil
	})
	r := &Runner{Name: "p", Sources: []NamedSource{{Ref: "t.src", Source: src}},
		Stages: []NamedStage{{Kind: "stuck", Stage: stuck}}, Queue: 8}
	go func() {
		<-entered
		stopHard()
	}()
	if err := r.Run(context.Background(), hard); err != nil {
		t.Fatal(err)
	}
}
