package pipeline

import (
	"context"
	"errors"
	"fmt"
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

// isolatedStage is a stage that asks for a goroutine of its own.
type isolatedStage struct{ Stage }

func (isolatedStage) Isolated() bool { return true }

func TestRunnerSegments(t *testing.T) {
	plain := dropEvery(2, 0)
	iso := isolatedStage{plain}
	for _, c := range []struct {
		name     string
		stages   []Stage
		separate bool
		want     string
	}{
		{"default pipeline's shape", []Stage{plain, plain, plain, plain, iso, plain, plain, plain, plain}, false, "[[0 1 2 3] [4] [5 6 7 8]]"},
		{"separate", []Stage{plain, plain, iso, plain}, true, "[[0] [1] [2] [3]]"},
		{"isolated first and last", []Stage{iso, plain, iso}, false, "[[0] [1] [2]]"},
		{"two isolated in a row", []Stage{plain, iso, iso, plain}, false, "[[0] [1] [2] [3]]"},
		{"none isolated", []Stage{plain, plain}, false, "[[0 1]]"},
	} {
		r := &Runner{Separate: c.separate}
		for _, st := range c.stages {
			r.Stages = append(r.Stages, NamedStage{Kind: "k", Stage: st})
		}
		if got := fmt.Sprint(r.segments()); got != c.want {
			t.Errorf("%s: segments %s, want %s", c.name, got, c.want)
		}
	}
}

// Every envelope leaves the pipeline exactly once, whichever stage drops it
// and whichever goroutine runs it, and the runner stops with no goroutine
// left behind.
func TestRunnerCallsDoneOnceForEveryEnvelope(t *testing.T) {
	for _, c := range []struct {
		name     string
		separate bool
	}{{"segments", false}, {"separate", true}} {
		t.Run(c.name, func(t *testing.T) { testDoneOnce(t, c.separate) })
	}
}

func testDoneOnce(t *testing.T, separate bool) {
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
			{Kind: "c", Stage: isolatedStage{dropEvery(5, 1)}},
			{Kind: "d", Stage: dropEvery(7, 2)},
			{Kind: "e", Stage: dropEvery(11, 3)},
		},
		MaxBatch: 16,
		Separate: separate,
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
