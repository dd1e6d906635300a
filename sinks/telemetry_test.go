package sinks

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	dto "github.com/prometheus/client_model/go"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/goleak"

	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// Each send of a delivery is a span (attempt 1, then the redelivery as
// attempt 2), and the link's metrics count it by type, link and outcome,
// with its ACK's round trip per link.
func TestSendSpansAndLinkMetrics(t *testing.T) {
	defer goleak.VerifyNone(t)
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	h := newHarness(t, t.TempDir(), func(c *WebSocketConfig) {
		c.AckTimeout, c.BackoffMax, c.MaxAttempts = 40*time.Millisecond, 40*time.Millisecond, 0
	})
	defer h.close()
	h.sink.tracer = tp.Tracer("test") // before any link, hence any writer, exists

	rec := recorder{}
	rec.then = func(id string, n int) { // ACK the second send only
		if n == 2 {
			h.links.Get("pi-1").Outbox().Acked("c1", id)
		}
	}
	l := h.attach("pi-1", true, rec.conn())
	h.publish(l, 1, 1)
	h.waitDrained("pi-1")

	ended := spans.Ended()
	if len(ended) != 2 {
		t.Fatalf("%d spans ended, want 2 (one per send)", len(ended))
	}
	for i, s := range ended {
		attrs := map[attribute.Key]attribute.Value{}
		for _, kv := range s.Attributes() {
			attrs[kv.Key] = kv.Value
		}
		if s.Name() != "send" || attrs["slipstream.link"].AsString() != "pi-1" ||
			attrs["slipstream.message_id"].AsString() != "m1" || attrs["slipstream.type"].AsString() != "SK" ||
			attrs["slipstream.attempt"].AsInt64() != int64(i+1) || attrs["slipstream.redelivery"].AsBool() != (i == 1) {
			t.Errorf("span %d: %s %v", i, s.Name(), s.Attributes())
		}
	}

	for outcome, want := range map[string]float64{"sent": 1, "redelivered": 1, "acked": 1, "dead_lettered": 0} {
		var m dto.Metric
		if err := h.sink.m.out.WithLabelValues("SK", "pi-1", outcome).Write(&m); err != nil {
			t.Fatal(err)
		}
		if got := m.GetCounter().GetValue(); got != want {
			t.Errorf("slipstream_messages_out_total{outcome=%q} = %v, want %v", outcome, got, want)
		}
	}
	var m dto.Metric
	if err := h.sink.m.rtt.WithLabelValues("pi-1").(interface{ Write(*dto.Metric) error }).Write(&m); err != nil {
		t.Fatal(err)
	}
	if n := m.GetHistogram().GetSampleCount(); n != 1 {
		t.Errorf("slipstream_ack_rtt_seconds{link=pi-1} has %d samples, want 1", n)
	}
}

// countingSampler counts the spans started.
type countingSampler struct {
	sdktrace.Sampler
	calls atomic.Int64
}

func (c *countingSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	c.calls.Add(1)
	return c.Sampler.ShouldSample(p)
}

// A delivery whose stored trace context is not sampled starts no send span
// (not even a non-recording one: that costs an allocation per send); a
// sampled one gets its span.
func TestSendSpanOnlyForSampledTraces(t *testing.T) {
	defer goleak.VerifyNone(t)
	spans := tracetest.NewSpanRecorder()
	sampler := &countingSampler{Sampler: sdktrace.ParentBased(sdktrace.AlwaysSample())}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans), sdktrace.WithSampler(sampler))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	h := newHarness(t, t.TempDir(), nil)
	defer h.close()
	h.sink.tracer = tp.Tracer("test")

	rec := recorder{}
	rec.then = func(id string, n int) { h.links.Get("pi-1").Outbox().Acked("c1", id) }
	l := h.attach("pi-1", true, rec.conn())
	const tp0 = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-"
	for i, flags := range []string{"00", "01"} {
		f := fmt.Appendf(nil, `{"type":"SK","messageId":"t%d","clusterGroupId":"c1","key":"k","value":1,"traceparent":"%s%s"}`, i, tp0, flags)
		seq := l.NextSeq()
		if err := h.st.DB().Update(func(txn *badger.Txn) error { return txn.Set(store.OutboxKey(l.ID(), seq), f) }); err != nil {
			t.Fatal(err)
		}
		env := &pipeline.Envelope{Status: pipeline.Accepted, Encoded: f, Recipients: []string{l.ID()}, Seqs: []uint64{seq}}
		if err := h.sink.Deliver(context.Background(), []*pipeline.Envelope{env}); err != nil {
			t.Fatal(err)
		}
	}
	h.waitDrained("pi-1")
	ended := spans.Ended()
	if len(ended) != 1 || sampler.calls.Load() != 1 {
		t.Fatalf("%d send spans recorded, %d started; want 1 and 1 (the sampled delivery's)", len(ended), sampler.calls.Load())
	}
	for _, kv := range ended[0].Attributes() {
		if kv.Key == "slipstream.message_id" && kv.Value.AsString() != "t1" {
			t.Errorf("span for %s, want t1", kv.Value.AsString())
		}
	}
}
