package stages

import (
	"bytes"
	"context"
	"fmt"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"strconv"
	"testing"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// Benchmarks of each stage over batches of 256 realistic SK envelopes (about
// 300 bytes each, as a payment service sends them), and of the whole
// pipeline in process. Each stage benchmark reports ns/op per batch plus
// ns/msg and msgs/s. Run them quickly with
//
//	go test -run='^$' -bench=. -benchtime=200x ./stages/

const benchBatch = 256

// benchFrame is an SK frame of about 300 bytes that arrived from peer aws-1.
func benchFrame(id string) []byte {
	return fmt.Appendf(nil, `{"type":"SK","messageId":%q,"originInstanceId":"pi-aws","sourceInstanceId":"aws-1",`+
		`"clusterGroupId":"cg","messagePath":["aws-1"],"timestamp":1700000000000,`+
		`"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","key":"order:123456",`+
		`"value":{"status":"paid","amount":129.5,"currency":"EUR","items":3}}`, id)
}

// benchOrigin is a sender whose replies go nowhere (a real link encodes and
// queues them; that cost belongs to the source).
func benchOrigin(id string, isPeer bool) *fakeOrigin {
	return &fakeOrigin{id: id, peer: isPeer, ReplyFunc: func(*slipstream.Message) {}}
}

// benchLinks declares the links of a small mesh: two connected peers, one
// offline peer and a connected client.
func benchLinks(h *harness) {
	h.attach(link.Spec{ID: "aws-1", Tags: []string{"aws"}, Peer: true, Acks: true, Durable: true})
	h.attach(link.Spec{ID: "azure-1", Tags: []string{"azure"}, Peer: true, Acks: true, Durable: true})
	h.ensure(link.Spec{ID: "gcp-1", Tags: []string{"gcp"}, Peer: true, Acks: true})
	h.attach(link.Spec{ID: "pi-1", Tags: []string{"local"}, Acks: true, Durable: true})
}

// benchDecoded returns a batch as decode leaves it.
func benchDecoded(b *testing.B, prefix string) []*pipeline.Envelope {
	from := benchOrigin("aws-1", true)
	batch := make([]*pipeline.Envelope, benchBatch)
	for i := range batch {
		m, err := slipstream.Decode(benchFrame(prefix+strconv.Itoa(i)), nil)
		if err != nil {
			b.Fatal(err)
		}
		batch[i] = &pipeline.Envelope{Msg: m, From: from, Received: time.Now()}
	}
	return batch
}

// reportPerMsg adds ns/msg and msgs/s to a benchmark of batches.
func reportPerMsg(b *testing.B) {
	msgs := float64(b.N * benchBatch)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/msgs, "ns/msg")
	b.ReportMetric(msgs/b.Elapsed().Seconds(), "msgs/s")
}

func runBench(b *testing.B, st pipeline.Stage, batch []*pipeline.Envelope, reset func()) {
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		reset()
		if _, err := st.Process(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	reportPerMsg(b)
}

func BenchmarkDecode(b *testing.B) {
	st := newHarness(b).stage(decodeDefault)
	from := benchOrigin("aws-1", true)
	batch := make([]*pipeline.Envelope, benchBatch)
	for i := range batch {
		batch[i] = &pipeline.Envelope{Raw: benchFrame("msg-" + strconv.Itoa(i)), From: from}
	}
	runBench(b, st, batch, func() {
		for _, e := range batch {
			e.Msg, e.Ctx, e.Status = nil, nil, pipeline.Accepted
		}
	})
}

func BenchmarkLoopCheck(b *testing.B) {
	st := newHarness(b).stage(`stage "loop_check" {}`)
	batch := benchDecoded(b, "msg-")
	runBench(b, st, batch, func() {
		for _, e := range batch {
			e.Msg.MessagePath, e.Status = e.Msg.MessagePath[:1], pipeline.Accepted
		}
	})
}

func BenchmarkDedup(b *testing.B) {
	h := newHarness(b)
	st := h.stage(`stage "dedup" { window = "1h" }`)
	for i := range 1000 { // earlier traffic
		h.putMarker(cluster, "old-"+strconv.Itoa(i), time.Hour)
	}
	batch := benchDecoded(b, "msg-")
	for i, e := range batch {
		if i%16 == 0 { // a few retransmissions
			e.Msg.MessageID = "old-" + strconv.Itoa(i)
		}
	}
	runBench(b, st, batch, func() {
		for _, e := range batch {
			e.Status = pipeline.Accepted
		}
	})
}

func BenchmarkTagFilter(b *testing.B) {
	h := newHarness(b)
	st := h.stage(`stage "tag_filter" {}`)
	benchLinks(h)
	batch := benchDecoded(b, "msg-")
	runBench(b, st, batch, func() {})
}

// BenchmarkPersist measures the group commit alone (no state stage in the
// pipeline) and with the state applied in the same transaction.
func BenchmarkPersist(b *testing.B) {
	b.Run("messages", func(b *testing.B) { benchPersist(b, false) })
	b.Run("with-state", func(b *testing.B) { benchPersist(b, true) })
}

func benchPersist(b *testing.B, withState bool) {
	h := newHarness(b)
	h.stage(`stage "dedup" { window = "1h" }`)
	if withState {
		h.bc.StageKinds = []string{"dedup", "persist", "state"}
	}
	st := h.stage(`stage "persist" {}`)
	benchLinks(h)
	batch := benchDecoded(b, "msg-")
	round := 0
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer() // new ids each round, or everything is a duplicate
		round++
		prefix := "r" + strconv.Itoa(round) + "-"
		for i, e := range batch {
			e.Msg.MessageID = prefix + strconv.Itoa(i)
			e.Status, e.Encoded, e.Seqs = pipeline.Accepted, nil, nil
			e.Recipients = []string{"azure-1", "gcp-1", "pi-1"}
		}
		b.StartTimer()
		if _, err := st.Process(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	reportPerMsg(b)
}

// BenchmarkState answers GK requests for keys that are set.
func BenchmarkState(b *testing.B) {
	h := newHarness(b)
	h.bc.StageKinds = []string{"persist", "state"}
	st := h.stage(`stage "state" {}`)
	persist := h.stage(`stage "persist" {}`)
	if _, err := persist.Process(context.Background(), benchDecoded(b, "set-")); err != nil {
		b.Fatal(err)
	}
	from := benchOrigin("pi-1", false)
	batch := make([]*pipeline.Envelope, benchBatch)
	for i := range batch {
		m, err := slipstream.Decode(fmt.Appendf(nil, `{"type":"GK","messageId":"q-%d","key":"order:123456"}`, i), nil)
		if err != nil {
			b.Fatal(err)
		}
		batch[i] = &pipeline.Envelope{Msg: m, From: from}
	}
	runBench(b, st, batch, func() {})
}

// BenchmarkCommand is the command stage's cost for data that is not a
// slipstream.* command (what it sees almost always).
func BenchmarkCommand(b *testing.B) {
	h := newHarness(b)
	h.bc.Commands = pipeline.NewCommands()
	st := h.stage(`stage "command" {}`)
	runBench(b, st, benchDecoded(b, "msg-"), func() {})
}

func BenchmarkAck(b *testing.B) {
	h := newHarness(b)
	st := h.stage(`stage "ack" {}`)
	benchLinks(h)
	template := benchDecoded(b, "msg-")
	batch := make([]*pipeline.Envelope, len(template))
	runBench(b, st, batch, func() { copy(batch, template) }) // ack compacts its batch in place
}

func BenchmarkFanout(b *testing.B) {
	h := newHarness(b)
	h.bc.Sinks = []pipeline.Sink{&countingSink{}}
	st := h.stage(`stage "fanout" {}`)
	runBench(b, st, benchDecoded(b, "msg-"), func() {})
}

// countingSink counts what it is handed and does nothing else.
type countingSink struct{ n int }

func (s *countingSink) Deliver(_ context.Context, batch []*pipeline.Envelope) error {
	s.n += len(batch)
	return nil
}

// BenchmarkPipelineInProcess runs the nine stages of the default pipeline under a pipeline.Runner,
// with real Badger (synced group commits), over b.N frames from a client,
// each routed to three links, and reports msgs/s end to end.
// BenchmarkPipelineInProcess runs the default pipeline's stages over
// Badger on disk, with tracing off, and on with 1% and 100% of traces
// sampled (spans go through the SDK's batch processor to an exporter that
// drops them: the cost of tracing without a collector's); and with tracing
// off and every stage in a goroutine of its own (pipeline.Runner.Separate),
// against which the runner's default (stages sharing goroutines between
// isolated ones) compares.
func BenchmarkPipelineInProcess(b *testing.B) {
	for _, tc := range []struct {
		name     string
		ratio    float64 // < 0: no tracer
		separate bool
	}{{"tracing=off", -1, false}, {"tracing=1%", 0.01, false}, {"tracing=100%", 1, false}, {"tracing=off,separate", -1, true}} {
		b.Run(tc.name, func(b *testing.B) {
			var tracer trace.Tracer
			if tc.ratio >= 0 {
				tp := sdktrace.NewTracerProvider(
					sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(tc.ratio))),
					sdktrace.WithBatcher(discardExporter{}))
				defer func() { _ = tp.Shutdown(context.Background()) }()
				tracer = tp.Tracer("bench")
			}
			benchPipeline(b, tracer, tc.separate)
		})
	}
}

// discardExporter drops every span.
type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

func benchPipeline(b *testing.B, tracer trace.Tracer, separate bool) {
	h := newHarness(b)
	benchLinks(h)
	sink := &countingSink{}
	h.bc.Sinks = []pipeline.Sink{sink}
	h.bc.Commands = pipeline.NewCommands()
	kinds := []string{"decode", "loop_check", "dedup", "tag_filter", "persist", "ack", "state", "command", "fanout"}
	h.bc.StageKinds = kinds
	snippets := map[string]string{"dedup": `stage "dedup" { window = "1h" }`}
	var stages []pipeline.NamedStage
	for _, k := range kinds {
		src, ok := snippets[k]
		if !ok {
			src = `stage "` + k + `" {}`
		}
		stages = append(stages, pipeline.NamedStage{Kind: k, Stage: h.stage(src)})
	}

	from := benchOrigin("pi-1", false)
	frames := make([][]byte, b.N)
	for i := range frames {
		// Without a traceparent (as from a client): this instance's
		// sampler decides, as the tracing ratios above intend.
		frames[i] = bytes.Replace(benchFrame("bench-"+strconv.Itoa(i)),
			[]byte(`"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",`), nil, 1)
	}
	src := sourceFunc(func(ctx context.Context, emit func(*pipeline.Envelope) bool) error {
		for _, f := range frames {
			if !emit(&pipeline.Envelope{Raw: f, From: from}) {
				return ctx.Err()
			}
		}
		return nil
	})
	r := &pipeline.Runner{Name: "main", Sources: []pipeline.NamedSource{{Ref: "bench.src", Source: src}}, Stages: stages, Tracer: tracer, Separate: separate}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	b.ReportAllocs()
	b.ResetTimer()
	if err := r.Run(ctx, context.Background()); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	cancel()
	if sink.n != b.N {
		b.Fatalf("sink got %d messages, want %d", sink.n, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
