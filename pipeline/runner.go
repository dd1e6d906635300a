package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/slipstream-sync/slipstream/internal/telemetry"
)

// Defaults of the runner.
const (
	// DefaultMaxBatch bounds how many waiting envelopes a stage takes at once.
	DefaultMaxBatch = 256
	// DefaultQueue is the capacity of each channel between stages.
	DefaultQueue = 1024
)

// NamedSource is a built source with its reference ("websocket_server.ingress").
type NamedSource struct {
	Ref    string
	Source Source
}

// NamedStage is a built stage with its kind.
type NamedStage struct {
	Kind  string
	Stage Stage
}

// Runner runs one pipeline: its sources feed a chain of stages, one goroutine
// per stage, over bounded channels of envelopes. Each stage takes whatever is
// waiting (up to MaxBatch) as one batch, so batching grows with load and adds
// no latency when idle. A full channel blocks the stage before it and finally
// the sources' emit, which stops them reading their sockets.
type Runner struct {
	Name     string
	Sources  []NamedSource
	Stages   []NamedStage
	MaxBatch int
	Queue    int
	Logger   *slog.Logger
	Tracer   trace.Tracer // nil: no spans
	Metrics  *Metrics
	// LogMessages logs one line per message as it leaves the pipeline
	// (log.messages): its type, id, link, outcome, recipients and the
	// stage it left at.
	LogMessages bool

	startOnce sync.Once
	stopEmit  chan struct{}
	rounds    atomic.Uint64

	statsOnce sync.Once
	stats     []stageStats
	tapping   atomic.Int32 // taps attached: the hook costs one load when 0
	tapMu     sync.Mutex
	taps      map[*tap]struct{}
}

// stageStats are a stage's counters since the runner was built.
type stageStats struct{ processed, dropped, errors atomic.Uint64 }

// StageStats is a snapshot of one stage's counters (Stats).
type StageStats struct {
	Stage     string `json:"stage"`
	Processed uint64 `json:"processed"` // envelopes handed to the stage
	Dropped   uint64 `json:"dropped"`   // envelopes it did not pass on
	Errors    uint64 `json:"errors"`    // batches it failed
}

func (r *Runner) stageStats() []stageStats {
	r.statsOnce.Do(func() { r.stats = make([]stageStats, len(r.Stages)) })
	return r.stats
}

// Stats returns each stage's counters, in stage order.
func (r *Runner) Stats() []StageStats {
	st := r.stageStats()
	out := make([]StageStats, len(r.Stages))
	for i, s := range r.Stages {
		out[i] = StageStats{Stage: s.Kind, Processed: st[i].processed.Load(), Dropped: st[i].dropped.Load(), Errors: st[i].errors.Load()}
	}
	return out
}

type tap struct {
	stage string
	fn    func(*Envelope)
}

// Tap calls fn, on the stage's goroutine, with every envelope stage passes
// on, until the returned function is called. fn must not block nor keep the
// envelope (later stages change it): copy what it needs and return. With no
// tap attached the hook costs one atomic load per batch.
func (r *Runner) Tap(stage string, fn func(*Envelope)) (stop func()) {
	t := &tap{stage: stage, fn: fn}
	r.tapMu.Lock()
	if r.taps == nil {
		r.taps = map[*tap]struct{}{}
	}
	r.taps[t] = struct{}{}
	r.tapping.Add(1)
	r.tapMu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.tapMu.Lock()
			delete(r.taps, t)
			r.tapping.Add(-1)
			r.tapMu.Unlock()
		})
	}
}

func (r *Runner) tapOut(stage string, out []*Envelope) {
	r.tapMu.Lock()
	defer r.tapMu.Unlock()
	for t := range r.taps {
		if t.stage == stage {
			for _, e := range out {
				t.fn(e)
			}
		}
	}
}

// Metrics are the runner's per-stage instruments, shared by all pipelines of
// an instance.
type Metrics struct {
	Messages *prometheus.CounterVec   // pipeline, stage, outcome
	Batches  *prometheus.HistogramVec // pipeline, stage: seconds per batch
	Errors   *prometheus.CounterVec   // pipeline, stage
	Queue    *prometheus.GaugeVec     // pipeline, stage: envelopes waiting
	In       *prometheus.CounterVec   // type, link, outcome: messages as they leave the pipeline
	Age      *prometheus.HistogramVec // point: end-to-end latency (telemetry.NewMessageAge)
}

// NewMetrics registers the runner's instruments on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slipstream_stage_messages_total",
			Help: "Envelopes processed by a stage, by outcome: passed, duplicate, loop, rejected, consumed, dropped, failed.",
		}, []string{"pipeline", "stage", "outcome"}),
		Batches: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "slipstream_stage_batch_seconds",
			Help:    "Time a stage took to process one batch.",
			Buckets: []float64{.00001, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .5, 1},
		}, []string{"pipeline", "stage"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slipstream_stage_errors_total",
			Help: "Batches a stage failed (their messages were not acknowledged; senders retransmit).",
		}, []string{"pipeline", "stage"}),
		Queue: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "slipstream_stage_queue",
			Help: "Envelopes waiting in front of a stage.",
		}, []string{"pipeline", "stage"}),
	}
	m.In = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipstream_messages_in_total",
		Help: "Messages received from links, by type (invalid: undecodable), link (ephemeral: every unnamed client) and outcome as they left the pipeline: accepted, duplicate, loop, rejected, consumed, dropped, failed.",
	}, []string{"type", "link", "outcome"})
	m.Age = telemetry.NewMessageAge()
	if reg != nil {
		reg.MustRegister(m.Messages, m.Batches, m.Errors, m.Queue, m.In)
		var err error
		if m.Age, err = telemetry.RegisterShared(reg, m.Age); err != nil {
			panic(err)
		}
	}
	return m
}

// left counts an envelope leaving the pipeline at stage (last: it passed
// every stage) in slipstream_messages_in_total and, for an accepted data
// message, its age in slipstream_message_age_seconds; then logs it.
func (r *Runner) left(stage string, e *Envelope, last bool) {
	typ, link, outcome := "invalid", "internal", e.Status.String()
	if e.Msg != nil && e.Msg.Type.Known() {
		typ = string(e.Msg.Type)
	}
	if e.From != nil {
		d, ok := e.From.(interface{ Durable() bool })
		link = telemetry.LinkLabel(e.From.ID(), !ok || d.Durable())
	}
	if e.Status == Accepted && !last {
		outcome = "dropped"
	}
	r.Metrics.In.WithLabelValues(typ, link, outcome).Inc()
	if e.Status == Accepted && last && e.Msg != nil && e.Msg.Type.IsData() && e.Msg.InReplyTo == "" {
		telemetry.ObserveAge(r.Metrics.Age.WithLabelValues(telemetry.AgeAccepted), e.Msg.Timestamp, time.Now())
	}
	r.logMessage(stage, e)
}

// Run runs the pipeline until ctx is cancelled, then drains: sources stop
// reading and return, each stage finishes what is queued and closes its
// output. Run returns when the last stage is done. Cancelling hard makes the
// stages stop at once, dropping what is queued (none of it was acknowledged).
// A source's fatal error cancels nothing by itself: it is returned after the
// drain.
func (r *Runner) Run(ctx, hard context.Context) error {
	if r.MaxBatch <= 0 {
		r.MaxBatch = DefaultMaxBatch
	}
	if r.Queue <= 0 {
		r.Queue = DefaultQueue
	}
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
	if r.Metrics == nil {
		r.Metrics = NewMetrics(nil)
	}
	r.startOnce.Do(func() { r.stopEmit = make(chan struct{}) })

	chans := make([]chan *Envelope, len(r.Stages)+1)
	for i := range chans {
		chans[i] = make(chan *Envelope, r.Queue)
	}
	in := chans[0]

	var stagesWG sync.WaitGroup
	for i, st := range r.Stages {
		stagesWG.Add(1)
		go func() {
			defer stagesWG.Done()
			defer close(chans[i+1])
			r.runStage(hard, i, st, chans[i], chans[i+1], i == 0, i == len(r.Stages)-1)
		}()
	}
	// The last channel has no reader but the drain below.
	var sinkWG sync.WaitGroup
	sinkWG.Add(1)
	go func() {
		defer sinkWG.Done()
		for range chans[len(chans)-1] {
		}
	}()

	emit := func(e *Envelope) bool {
		if e.Received.IsZero() {
			e.Received = time.Now()
		}
		select {
		case in <- e:
			return true
		case <-r.stopEmit:
			return false
		case <-hard.Done():
			return false
		}
	}

	var srcWG sync.WaitGroup
	errs := make([]error, len(r.Sources))
	for i, s := range r.Sources {
		srcWG.Add(1)
		go func() {
			defer srcWG.Done()
			if err := s.Source.Run(ctx, emit); err != nil && !errors.Is(err, context.Canceled) {
				r.Logger.Error("source failed", "pipeline", r.Name, "source", s.Ref, "err", err)
				errs[i] = err
			}
		}()
	}
	srcWG.Wait()
	close(r.stopEmit)
	close(in)
	stagesWG.Wait()
	sinkWG.Wait()
	return errors.Join(errs...)
}

// runStage is one stage's loop: take a batch, process it, pass it on.
func (r *Runner) runStage(hard context.Context, idx int, st NamedStage, in <-chan *Envelope, out chan<- *Envelope, first, last bool) {
	log := r.Logger.With("pipeline", r.Name, "stage", st.Kind)
	stats := &r.stageStats()[idx]
	m := r.Metrics
	passed := m.Messages.WithLabelValues(r.Name, st.Kind, "passed")
	failed := m.Messages.WithLabelValues(r.Name, st.Kind, "failed")
	dropped := m.Messages.WithLabelValues(r.Name, st.Kind, "dropped")
	errs := m.Errors.WithLabelValues(r.Name, st.Kind)
	hist := m.Batches.WithLabelValues(r.Name, st.Kind)
	queue := m.Queue.WithLabelValues(r.Name, st.Kind)
	var outcome [Failed + 1]prometheus.Counter
	for s := Duplicate; s <= Failed; s++ {
		outcome[s] = m.Messages.WithLabelValues(r.Name, st.Kind, s.String())
	}

	batch := make([]*Envelope, 0, r.MaxBatch)
	work := make([]*Envelope, 0, r.MaxBatch)
	before := make([]Status, 0, r.MaxBatch)
	// On a hard stop, whatever is still queued leaves the pipeline unfinished.
	defer func() {
		if hard.Err() == nil {
			return
		}
		for {
			select {
			case e, ok := <-in:
				if !ok {
					return
				}
				e.finish()
			default:
				return
			}
		}
	}()
	for {
		var e *Envelope
		var ok bool
		select {
		case e, ok = <-in:
		case <-hard.Done():
			return
		}
		if !ok {
			return
		}
		batch = append(batch[:0], e)
		closed := false
	drain:
		for len(batch) < r.MaxBatch {
			select {
			case e, ok := <-in:
				if !ok {
					closed = true
					break drain
				}
				batch = append(batch, e)
			default:
				break drain
			}
		}
		queue.Set(float64(len(in)))
		before = before[:0]
		for _, e := range batch {
			before = append(before, e.Status)
		}
		n := len(batch)
		// Stages may filter their input in place: they get a copy, and the
		// runner keeps the batch for tracing and bookkeeping.
		work = append(work[:0], batch...)
		start := time.Now()
		outBatch, err := st.Stage.Process(hard, work)
		end := time.Now()
		hist.Observe(end.Sub(start).Seconds())
		stats.processed.Add(uint64(n))
		if err != nil {
			errs.Inc()
			stats.errors.Add(1)
			failed.Add(float64(n))
			log.Error("stage failed a batch; its messages were not acknowledged", "batch", n, "err", err)
			r.trace(st.Kind, first, batch, before, start, end, err)
			for _, e := range batch {
				e.finish()
			}
			if closed {
				return
			}
			continue
		}
		r.trace(st.Kind, first, batch, before, start, end, nil)
		if r.tapping.Load() > 0 {
			r.tapOut(st.Kind, outBatch)
		}
		kept := 0
		for i, e := range batch {
			if before[i] == Accepted && e.Status != Accepted {
				outcome[e.Status].Inc()
			}
		}
		// A round number unique across the runner's stages marks what this
		// stage passed on; the rest of the batch was dropped here.
		round := r.rounds.Add(1)
		for _, e := range outBatch {
			e.mark = round
		}
		for _, e := range batch {
			if e.mark != round {
				r.left(st.Kind, e, false)
				e.finish() // dropped by this stage
			}
		}
		for i, e := range outBatch {
			if e.Status == Accepted {
				kept++
			}
			if last {
				r.left(st.Kind, e, true)
				e.finish()
				continue
			}
			select {
			case out <- e:
			case <-hard.Done():
				for _, e := range outBatch[i:] {
					e.finish()
				}
				return
			}
		}
		passed.Add(float64(kept))
		if d := n - len(outBatch); d > 0 {
			dropped.Add(float64(d))
			stats.dropped.Add(uint64(d))
		}
		if closed {
			return
		}
	}
}

// logMessage writes the log.messages line of an envelope leaving at stage.
func (r *Runner) logMessage(stage string, e *Envelope) {
	if !r.LogMessages {
		return
	}
	attrs := []any{"left_at", stage, "outcome", e.Status.String(),
		"latency", time.Since(e.Received).String()}
	if e.From != nil {
		attrs = append(attrs, "link", e.From.ID())
	}
	if m := e.Msg; m != nil {
		attrs = append(attrs, "type", string(m.Type), "messageId", m.MessageID)
		if m.Key != "" {
			attrs = append(attrs, "key", m.Key)
		}
	}
	if len(e.Recipients) > 0 {
		attrs = append(attrs, "recipients", e.Recipients)
	}
	r.Logger.Info("message", attrs...)
}

// trace records one span per envelope for a stage's batch. The first stage's
// span (a child of the incoming traceparent, if any) becomes the envelope's
// context: every later stage's span here is its child, and persist writes it
// into the forwarded traceparent, so the next instance's spans hang below
// this one's and a message's whole trip is one trace, in hop order.
func (r *Runner) trace(kind string, first bool, batch []*Envelope, before []Status, start, end time.Time, err error) {
	if r.Tracer == nil {
		return
	}
	name := "stage " + kind
	for i, e := range batch {
		// After the first stage, a message whose trace is not sampled gets
		// no spans at all: the sampler (parent based) would only make
		// non-recording ones, at the cost of an allocation each. Its
		// context (valid, not sampled) still travels in the traceparent.
		if !first {
			if sc := trace.SpanContextFromContext(e.Ctx); sc.IsValid() && !sc.IsSampled() {
				continue
			}
		}
		ctx, span := r.Tracer.Start(e.Context(), name,
			trace.WithTimestamp(start),
			trace.WithSpanKind(trace.SpanKindInternal))
		if span.IsRecording() {
			span.SetAttributes(
				attribute.String("slipstream.pipeline", r.Name),
				attribute.String("slipstream.stage", kind),
				attribute.Int("slipstream.batch", len(batch)),
			)
			if e.Msg != nil {
				span.SetAttributes(
					attribute.String("slipstream.type", string(e.Msg.Type)),
					attribute.String("slipstream.message_id", e.Msg.MessageID),
				)
			}
			if e.From != nil {
				span.SetAttributes(attribute.String("slipstream.link", e.From.ID()))
			}
			if before[i] != e.Status {
				span.SetAttributes(attribute.String("slipstream.outcome", e.Status.String()))
			}
			if err != nil {
				span.SetStatus(codes.Error, err.Error())
			}
		}
		span.End(trace.WithTimestamp(end))
		if first || !trace.SpanContextFromContext(e.Ctx).IsValid() {
			e.Ctx = ctx
		}
	}
}
