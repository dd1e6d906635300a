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

// Runner runs one pipeline: its sources feed a chain of stages over bounded
// channels of envelopes. A stage that waits (Isolated: persist, for its
// synced commit) has a goroutine of its own; each stretch of
// other stages shares one, which runs them in turn on the same batch (see
// Isolated). Each goroutine takes whatever is waiting in front of it (up to
// MaxBatch) as one batch, so batching grows with load and adds no latency
// when idle. A full channel blocks the goroutine before it and finally the
// sources' emit, which stops them reading their sockets.
type Runner struct {
	Name     string
	Sources  []NamedSource
	Stages   []NamedStage
	MaxBatch int
	Queue    int
	// Separate runs every stage in a goroutine of its own, as if each were
	// Isolated (for comparisons: BenchmarkPipelineInProcess).
	Separate bool
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

	segs := r.segments()
	chans := make([]chan *Envelope, len(segs)+1)
	for i := range chans {
		chans[i] = make(chan *Envelope, r.Queue)
	}
	in := chans[0]

	var stagesWG sync.WaitGroup
	for i, seg := range segs {
		stagesWG.Add(1)
		go func() {
			defer stagesWG.Done()
			defer close(chans[i+1])
			r.runSegment(hard, seg, chans[i], chans[i+1])
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

// stageRun is what a stage's goroutine keeps for one stage: its
// instruments and its reusable buffers.
type stageRun struct {
	st          NamedStage
	first, last bool // the pipeline's first and last stage
	log         *slog.Logger
	stats       *stageStats
	passed      prometheus.Counter
	failed      prometheus.Counter
	dropped     prometheus.Counter
	errs        prometheus.Counter
	hist        prometheus.Observer
	queue       prometheus.Gauge
	outcome     [Failed + 1]prometheus.Counter
	work        []*Envelope
	before      []Status
}

func (r *Runner) newStageRun(idx int) *stageRun {
	st := r.Stages[idx]
	m := r.Metrics
	sr := &stageRun{
		st: st, first: idx == 0, last: idx == len(r.Stages)-1,
		log:     r.Logger.With("pipeline", r.Name, "stage", st.Kind),
		stats:   &r.stageStats()[idx],
		passed:  m.Messages.WithLabelValues(r.Name, st.Kind, "passed"),
		failed:  m.Messages.WithLabelValues(r.Name, st.Kind, "failed"),
		dropped: m.Messages.WithLabelValues(r.Name, st.Kind, "dropped"),
		errs:    m.Errors.WithLabelValues(r.Name, st.Kind),
		hist:    m.Batches.WithLabelValues(r.Name, st.Kind),
		queue:   m.Queue.WithLabelValues(r.Name, st.Kind),
		work:    make([]*Envelope, 0, r.MaxBatch),
		before:  make([]Status, 0, r.MaxBatch),
	}
	for s := Duplicate; s <= Failed; s++ {
		sr.outcome[s] = m.Messages.WithLabelValues(r.Name, st.Kind, s.String())
	}
	return sr
}

// Isolated is implemented by stages that must run in a goroutine of their
// own: those that wait (persist, for its synced commit), so that
// the envelopes arriving meanwhile queue in front of them and make their
// next batch. The runner runs each stretch of other stages between them in
// one goroutine, one stage after the other on the same batch: a message then
// crosses three goroutines in the default pipeline instead of nine.
type Isolated interface {
	// Isolated reports whether the stage runs in a goroutine of its own.
	Isolated() bool
}

func isolated(st Stage) bool {
	i, ok := st.(Isolated)
	return ok && i.Isolated()
}

// segments splits the stages into the runs of stages that share a
// goroutine: an isolated stage is alone in its segment, and so is every
// stage when Separate is set.
func (r *Runner) segments() [][]int {
	var segs [][]int
	var cur []int
	for i, st := range r.Stages {
		if r.Separate || isolated(st.Stage) {
			if len(cur) > 0 {
				segs = append(segs, cur)
			}
			segs, cur = append(segs, []int{i}), nil
			continue
		}
		cur = append(cur, i)
	}
	if len(cur) > 0 {
		segs = append(segs, cur)
	}
	return segs
}

// runSegment is the loop of one goroutine: take what waits in front of its
// first stage as a batch, run it through each of its stages in turn, pass
// what is left on.
func (r *Runner) runSegment(hard context.Context, seg []int, in <-chan *Envelope, out chan<- *Envelope) {
	runs := make([]*stageRun, len(seg))
	for k, idx := range seg {
		runs[k] = r.newStageRun(idx)
	}
	batch := make([]*Envelope, 0, r.MaxBatch)
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
		runs[0].queue.Set(float64(len(in)))
		cur := batch
		for _, sr := range runs {
			if len(cur) == 0 {
				break
			}
			cur = r.step(hard, sr, cur)
		}
		for i, e := range cur {
			select {
			case out <- e:
			case <-hard.Done():
				for _, e := range cur[i:] {
					e.finish()
				}
				return
			}
		}
		if closed {
			return
		}
	}
}

// step runs one stage on batch and returns what it passes on (nothing when
// the stage is the pipeline's last: what passes it has left the pipeline).
// Whatever the stage drops, or the whole batch when it fails, is finished.
func (r *Runner) step(hard context.Context, sr *stageRun, batch []*Envelope) []*Envelope {
	sr.before = sr.before[:0]
	for _, e := range batch {
		sr.before = append(sr.before, e.Status)
	}
	n := len(batch)
	// Stages may filter their input in place: they get a copy, and the
	// runner keeps the batch for tracing and bookkeeping.
	sr.work = append(sr.work[:0], batch...)
	start := time.Now()
	outBatch, err := sr.st.Stage.Process(hard, sr.work)
	end := time.Now()
	sr.hist.Observe(end.Sub(start).Seconds())
	sr.stats.processed.Add(uint64(n))
	if err != nil {
		sr.errs.Inc()
		sr.stats.errors.Add(1)
		sr.failed.Add(float64(n))
		sr.log.Error("stage failed a batch; its messages were not acknowledged", "batch", n, "err", err)
		r.trace(sr.st.Kind, sr.first, batch, sr.before, start, end, err)
		for _, e := range batch {
			e.finish()
		}
		return nil
	}
	r.trace(sr.st.Kind, sr.first, batch, sr.before, start, end, nil)
	if r.tapping.Load() > 0 {
		r.tapOut(sr.st.Kind, outBatch)
	}
	for i, e := range batch {
		if sr.before[i] == Accepted && e.Status != Accepted {
			sr.outcome[e.Status].Inc()
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
			r.left(sr.st.Kind, e, false)
			e.finish() // dropped by this stage
		}
	}
	kept := 0
	for _, e := range outBatch {
		if e.Status == Accepted {
			kept++
		}
	}
	sr.passed.Add(float64(kept))
	if d := n - len(outBatch); d > 0 {
		sr.dropped.Add(float64(d))
		sr.stats.dropped.Add(uint64(d))
	}
	if sr.last {
		for _, e := range outBatch {
			r.left(sr.st.Kind, e, true)
			e.finish()
		}
		return nil
	}
	return outBatch
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
