package stages

import (
	"context"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// One span per stage per message: the first stage's span is a child of the
// incoming traceparent, every later stage's span is its child, and the
// forwarded message carries a traceparent naming this instance's span in the
// same trace, so the next hop continues the one trace.
func TestRunnerTracesEveryStageAndWritesTraceparentBack(t *testing.T) {
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	const parentID = "00f067aa0ba902b7"
	frame := `{"type":"SK","messageId":"tr-1","key":"k","value":1,"traceparent":"00-` + traceID + `-` + parentID + `-01"}`
	kinds, spans, env := runTraced(t, frame, sdktrace.ParentBased(sdktrace.AlwaysSample()))

	if len(spans) != len(kinds) {
		t.Fatalf("%d spans, want one per stage (%d)", len(spans), len(kinds))
	}
	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		if got := s.SpanContext().TraceID().String(); got != traceID {
			t.Errorf("span %s in trace %s, want %s", s.Name(), got, traceID)
		}
		byName[s.Name()] = s
	}
	decode := byName["stage decode"]
	if decode == nil {
		t.Fatal("no span for decode")
	}
	if got := decode.Parent().SpanID().String(); got != parentID {
		t.Errorf("decode span's parent = %s, want the incoming %s", got, parentID)
	}
	for _, k := range kinds[1:] {
		s := byName["stage "+k]
		if s == nil {
			t.Fatalf("no span for %s", k)
		}
		if s.Parent().SpanID() != decode.SpanContext().SpanID() {
			t.Errorf("span of %s is not a child of this instance's decode span", k)
		}
	}
	m, err := slipstream.Decode(env.Encoded, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := "00-" + traceID + "-" + decode.SpanContext().SpanID().String() + "-01"
	if m.TraceParent != want {
		t.Errorf("forwarded traceparent = %q, want %q", m.TraceParent, want)
	}
	if !strings.Contains(string(env.Encoded), `"sourceInstanceId":"`+selfID+`"`) {
		t.Errorf("forwarded message lacks sourceInstanceId: %s", env.Encoded)
	}
}

// countingSampler counts the spans the runner asks for.
type countingSampler struct {
	sdktrace.Sampler
	calls int
}

func (c *countingSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	c.calls++
	return c.Sampler.ShouldSample(p)
}

// A message whose trace is not sampled costs one sampling decision (the
// first stage's), records no span, and still forwards its trace id with the
// not-sampled flag, so that the next hops decide the same.
func TestRunnerSkipsStagesOfUnsampledTraces(t *testing.T) {
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	frame := `{"type":"SK","messageId":"tr-2","key":"k","value":1,"traceparent":"00-` + traceID + `-00f067aa0ba902b7-00"}`
	sampler := &countingSampler{Sampler: sdktrace.ParentBased(sdktrace.AlwaysSample())}
	_, spans, env := runTraced(t, frame, sampler)
	if len(spans) != 0 {
		t.Errorf("%d spans recorded for an unsampled trace", len(spans))
	}
	if sampler.calls != 1 {
		t.Errorf("%d spans started, want 1 (the first stage's)", sampler.calls)
	}
	m, err := slipstream.Decode(env.Encoded, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(m.TraceParent, "00-"+traceID+"-") || !strings.HasSuffix(m.TraceParent, "-00") {
		t.Errorf("forwarded traceparent = %q, want trace %s, not sampled", m.TraceParent, traceID)
	}
}

// runTraced runs frame through the default stages with a tracer using
// sampler and returns the stage kinds, the spans ended and the envelope.
func runTraced(t *testing.T, frame string, sampler sdktrace.Sampler) ([]string, []sdktrace.ReadOnlySpan, *pipeline.Envelope) {
	t.Helper()
	h := newHarness(t)
	h.attach(link.Spec{ID: "pi-2", Tags: []string{"local"}, Acks: true})
	h.bc.Sinks = []pipeline.Sink{&countingSink{}}
	kinds := []string{"decode", "loop_check", "dedup", "tag_filter", "persist", "ack", "fanout"}
	h.bc.StageKinds = kinds
	var stages []pipeline.NamedStage
	for _, k := range kinds {
		src := `stage "` + k + `" {}`
		if k == "dedup" {
			src = `stage "dedup" { window = "1h" }`
		}
		stages = append(stages, pipeline.NamedStage{Kind: k, Stage: h.stage(src)})
	}
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sampler))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	var env *pipeline.Envelope
	src := sourceFunc(func(ctx context.Context, emit func(*pipeline.Envelope) bool) error {
		env = &pipeline.Envelope{Raw: []byte(frame), From: client("pi-1")}
		emit(env)
		return nil
	})
	r := &pipeline.Runner{Name: "main", Sources: []pipeline.NamedSource{{Ref: "test.src", Source: src}},
		Stages: stages, Tracer: tp.Tracer("test")}
	if err := r.Run(context.Background(), context.Background()); err != nil {
		t.Fatal(err)
	}
	return kinds, rec.Ended(), env
}
