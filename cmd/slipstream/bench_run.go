package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/client"
)

// loadResult is one measured run against one target.
type loadResult struct {
	Target     string `json:"target"`
	FrameBytes int    `json:"frame_bytes"`
	// Messages are the measured messages sent (warmup excluded); Sent
	// counts the warmup too.
	Messages int64 `json:"messages"`
	Sent     int64 `json:"sent"`
	Acked    int64 `json:"acked"`
	Errors   int64 `json:"errors"`
	Unacked  int64 `json:"unacked"` // neither ACK nor error by the drain timeout
	// DurationSeconds is the measured window: first measured send to last
	// measured ACK.
	DurationSeconds float64   `json:"duration_s"`
	PublishRate     float64   `json:"publish_msgs_per_s"`
	DeliveredRates  []float64 `json:"delivered_msgs_per_s"` // one per subscriber
	AckLatency      latency   `json:"ack_latency_ms"`
	DeliveryLatency latency   `json:"delivery_latency_ms"`
	ScheduleLag     *latency  `json:"schedule_lag_ms,omitempty"` // open loop: actual send - intended send
	// Missing counts, over all subscribers, ACKed messages not delivered;
	// Duplicates deliveries of a message already delivered; Unexpected
	// deliveries of a message that was not sent in this run.
	Missing      int64    `json:"missing"`
	Duplicates   int64    `json:"duplicates"`
	Unexpected   int64    `json:"unexpected"`
	OutboxLeft   *int     `json:"outbox_left,omitempty"`
	ErrorSamples []string `json:"error_samples,omitempty"`
	// Instances break the deliveries down by the instance the subscribers
	// are connected to (mesh runs).
	Instances []instanceResult `json:"instances,omitempty"`
	// Usage is the CPU and RSS of the process measured (see procUsage), from
	// the first send until every delivery was in; per message over the
	// messages sent (warmup included).
	Usage *procUsage `json:"usage,omitempty"`
}

// instanceResult is the share of one instance's subscribers in a run.
type instanceResult struct {
	Instance        string    `json:"instance"`
	DeliveredRates  []float64 `json:"delivered_msgs_per_s"` // one per subscriber on it
	DeliveryLatency latency   `json:"delivery_latency_ms"`
	Missing         int64     `json:"missing"`
	Duplicates      int64     `json:"duplicates"`
}

// benchTarget is what one run measures: where its publishers and
// subscribers connect.
type benchTarget struct {
	label   string
	tag     string   // the run's targetedTags ("": a fresh one)
	pubURL  string   // the publishers connect here
	subURLs []string // -subscribers connect to each of these
	// names name the instances of subURLs for a per-instance breakdown
	// (nil: none).
	names []string
	// locals are the in-process instances whose outboxes (the subscribers'
	// and the peers') must be empty after the run.
	locals []*localInstance
	// memProfile, when set, is the file of a heap profile written once the
	// load is delivered.
	memProfile string
	// remote: the instance runs in another process (-url); its CPU and
	// RSS are measured only when -pid names it.
	remote bool
}

// singleTarget is one instance (or relay) at url, for everything.
func singleTarget(label, url string, local *localInstance) *benchTarget {
	t := &benchTarget{label: label, pubURL: url, subURLs: []string{url}}
	if local != nil {
		t.locals = []*localInstance{local}
	}
	return t
}

// loadRun is the state of one run. Sequence numbers 0..total-1 are shared
// by the publishers; seq < warmup is left out of the figures.
type loadRun struct {
	o      *benchOptions
	label  string
	tag    string // targetedTags of the run: only its subscribers match
	total  int64
	value  json.RawMessage // the padding value of every message
	stderr io.Writer

	next      atomic.Int64 // next seq to send
	sent      atomic.Int64
	acked     atomic.Int64
	failed    atomic.Int64
	ackedBits []atomic.Uint64
	startNs   atomic.Int64 // first measured send
	lastAckNs atomic.Int64 // last measured ACK

	errMu      sync.Mutex
	errSamples []string

	pubs []*benchPublisher
	subs []*benchSubscriber
}

type benchPublisher struct {
	c        *client.Client
	ackHist  histogram // written by c's reader goroutine (PublishAsync callbacks)
	lagHist  histogram // written by the publishing goroutine
	inflight chan struct{}
	drained  chan struct{} // closed when c's deliveries end
}

type benchSubscriber struct {
	id        string
	at        int // index in the target's subURLs
	c         *client.Client
	hist      histogram // written by the subscriber goroutine
	seen      []uint64  // bitset by seq; subscriber goroutine only
	distinct  atomic.Int64
	dups      atomic.Int64
	unexp     atomic.Int64
	measured  atomic.Int64
	lastNs    atomic.Int64
	probe     atomic.Int64 // last probe seen, -1 before
	countDone chan struct{}
}

const (
	sentField   = "benchSentNs"
	dialTimeout = 10 * time.Second
	routeWait   = 10 * time.Second
)

// runLoad measures one target.
func runLoad(ctx context.Context, o *benchOptions, t *benchTarget, stderr io.Writer) (res *loadResult, err error) {
	label := t.label
	r := &loadRun{o: o, label: label, tag: t.tag, total: o.Count + o.Warmup, stderr: stderr}
	if r.tag == "" {
		r.tag = newRunTag()
	}
	r.ackedBits = make([]atomic.Uint64, (r.total+63)/64)
	frameBytes := r.sizeValue()
	defer func() {
		if cerr := r.closeAll(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	if o.Idle > 0 {
		idle, err := openIdle(ctx, t.pubURL, o.Idle)
		if err != nil {
			return nil, fmt.Errorf("bench %s: %w", label, err)
		}
		defer idle.close()
	}
	if err := r.connect(ctx, t); err != nil {
		return nil, fmt.Errorf("bench %s: %w", label, err)
	}
	if err := r.awaitRoutes(ctx); err != nil {
		return nil, fmt.Errorf("bench %s: %w", label, err)
	}

	sampler := startBenchUsage(o, t)
	stopProgress := r.progress()
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(o.Duration)
	for i, p := range r.pubs {
		wg.Go(func() { r.publish(ctx, i, p, start, deadline) })
	}
	wg.Wait()
	r.awaitDeliveries(ctx)
	stopProgress()
	used := sampler.stop(r.total)
	if t.memProfile != "" {
		if err := writeHeapProfile(t.memProfile); err != nil {
			return nil, fmt.Errorf("bench %s: %w", label, err)
		}
	}

	res = &loadResult{Target: label, FrameBytes: frameBytes, Usage: used}
	if len(t.locals) > 0 {
		left, err := r.awaitOutboxes(t)
		if err != nil {
			return nil, fmt.Errorf("bench %s: count the outboxes: %w", label, err)
		}
		res.OutboxLeft = &left
	}
	if err := r.closeAll(); err != nil {
		return nil, err
	}
	r.fill(res, t.names)
	return res, nil
}

// connect dials the subscribers, -subscribers to each of the target's
// subURLs in turn (HELLO ids bench-sub-<i>, numbered across them, tagged
// with the run's tag), and then the publishers (anonymous connections;
// whatever is routed to them is ACKed and dropped).
func (r *loadRun) connect(ctx context.Context, t *benchTarget) error {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	for at, url := range t.subURLs {
		for range r.o.Subscribers {
			s := &benchSubscriber{id: fmt.Sprintf("bench-sub-%d", len(r.subs)), at: at,
				seen: make([]uint64, (r.total+63)/64), countDone: make(chan struct{})}
			s.probe.Store(-1)
			c, err := client.Dial(dctx, url, client.Options{ID: s.id, Tags: []string{r.tag}, AutoAck: true, Buffer: 4096})
			if err != nil {
				return fmt.Errorf("subscriber %s: %w", s.id, err)
			}
			s.c = c
			r.subs = append(r.subs, s)
			go r.subscribe(s)
		}
	}
	for range r.o.Publishers {
		c, err := client.Dial(dctx, t.pubURL, client.Options{AutoAck: true})
		if err != nil {
			return fmt.Errorf("publisher: %w", err)
		}
		p := &benchPublisher{c: c, inflight: make(chan struct{}, r.o.Inflight), drained: make(chan struct{})}
		r.pubs = append(r.pubs, p)
		go func() {
			defer close(p.drained)
			for range c.Deliveries() {
			}
		}()
	}
	return nil
}

// closeAll closes every connection and waits for their goroutines. It may
// be called again.
func (r *loadRun) closeAll() error {
	var errs []error
	for _, p := range r.pubs {
		errs = append(errs, p.c.Close())
		<-p.drained
	}
	for _, s := range r.subs {
		errs = append(errs, s.c.Close())
		<-s.countDone
	}
	return errors.Join(errs...)
}

func (r *loadRun) noteError(err error) {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	if len(r.errSamples) < 5 {
		r.errSamples = append(r.errSamples, err.Error())
	}
}

// awaitRoutes makes sure every subscriber receives what the publishers
// send before the run starts: it publishes probes until each subscriber has
// seen one (an instance, perhaps an older one behind -url, may answer HELLO
// a moment before the link it names is a recipient), then a fence that
// every subscriber must see.
func (r *loadRun) awaitRoutes(ctx context.Context) error {
	deadline := time.Now().Add(routeWait)
	var n int64
	probe := func() (int64, error) {
		m := &slipstream.Message{Type: slipstream.TypeSK, Key: r.tag + "/probe/" + strconv.FormatInt(n, 10),
			Value: json.RawMessage(`true`), TargetedTags: []string{r.tag}}
		pctx, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		_, err := r.pubs[0].c.Publish(pctx, m)
		n++
		return n - 1, err
	}
	all := func(ok func(s *benchSubscriber) bool) bool {
		for _, s := range r.subs {
			if !ok(s) {
				return false
			}
		}
		return true
	}
	wait := func(until time.Time, ok func(s *benchSubscriber) bool) bool {
		for !all(ok) {
			if time.Now().After(until) || ctx.Err() != nil {
				return false
			}
			time.Sleep(time.Millisecond)
		}
		return true
	}
	for {
		if _, err := probe(); err != nil {
			return fmt.Errorf("probe publish: %w", err)
		}
		if wait(time.Now().Add(100*time.Millisecond), func(s *benchSubscriber) bool { return s.probe.Load() >= 0 }) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("subscribers receive nothing %s after connecting", routeWait)
		}
	}
	fence, err := probe()
	if err != nil {
		return fmt.Errorf("probe publish: %w", err)
	}
	if !wait(deadline, func(s *benchSubscriber) bool { return s.probe.Load() == fence }) {
		return errors.New("subscribers did not receive the start fence")
	}
	return nil
}

// progress prints a line on stderr every o.Progress; the returned func stops
// it.
func (r *loadRun) progress() (stop func()) {
	if r.o.Progress <= 0 {
		return func() {}
	}
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(r.o.Progress)
		defer t.Stop()
		start, prev, prevDelivered := time.Now(), int64(0), int64(0)
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				acked := r.acked.Load()
				var delivered int64
				for _, s := range r.subs {
					delivered += s.distinct.Load()
				}
				secs := r.o.Progress.Seconds()
				fmt.Fprintf(r.stderr, "bench %s %5.0fs: sent %d, acked %d, delivered %d (%d subscribers); %.0f acked/s, %.0f delivered/s\n",
					r.label, now.Sub(start).Seconds(), r.sent.Load(), acked, delivered, len(r.subs),
					float64(acked-prev)/secs, float64(delivered-prevDelivered)/secs)
				prev, prevDelivered = acked, delivered
			}
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}

// fill computes the figures once every connection is closed (so every
// goroutine that wrote a histogram has ended); names, when given, are the
// instances the subscribers are spread over, for a breakdown by instance.
func (r *loadRun) fill(res *loadResult, names []string) {
	res.Sent = r.sent.Load()
	res.Messages = max(0, res.Sent-r.o.Warmup)
	res.Acked = r.acked.Load()
	res.Errors = r.failed.Load()
	res.Unacked = max(0, res.Sent-res.Acked-res.Errors)
	res.ErrorSamples = r.errSamples

	start := r.startNs.Load()
	window := func(endNs int64) float64 {
		if start == 0 || endNs <= start {
			return 0
		}
		return float64(endNs-start) / 1e9
	}
	res.DurationSeconds = round3(window(r.lastAckNs.Load()))
	var ackHist, lagHist, dlvHist histogram
	for _, p := range r.pubs {
		ackHist.merge(&p.ackHist)
		lagHist.merge(&p.lagHist)
	}
	if res.DurationSeconds > 0 {
		res.PublishRate = math.Round(float64(ackHist.n) / res.DurationSeconds)
	}
	res.AckLatency = ackHist.summary()
	if r.o.Rate > 0 {
		lag := lagHist.summary()
		res.ScheduleLag = &lag
	}
	res.DeliveredRates = make([]float64, len(r.subs))
	instHists := make([]histogram, len(names))
	res.Instances = make([]instanceResult, len(names))
	for i, name := range names {
		res.Instances[i].Instance = name
	}
	for i, s := range r.subs {
		dlvHist.merge(&s.hist)
		if w := window(s.lastNs.Load()); w > 0 {
			res.DeliveredRates[i] = math.Round(float64(s.measured.Load()) / w)
		}
		var missing int64
		for w := range r.ackedBits {
			missing += int64(bits.OnesCount64(r.ackedBits[w].Load() &^ s.seen[w]))
		}
		res.Missing += missing
		res.Duplicates += s.dups.Load()
		res.Unexpected += s.unexp.Load()
		if s.at < len(names) {
			in := &res.Instances[s.at]
			instHists[s.at].merge(&s.hist)
			in.DeliveredRates = append(in.DeliveredRates, res.DeliveredRates[i])
			in.Missing += missing
			in.Duplicates += s.dups.Load()
		}
	}
	res.DeliveryLatency = dlvHist.summary()
	for i := range res.Instances {
		res.Instances[i].DeliveryLatency = instHists[i].summary()
	}
	if len(res.Instances) == 0 {
		res.Instances = nil
	}
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

// writeHeapProfile writes the heap profile (after a GC: what is live).
func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// newRunTag is a fresh tag for a run's targetedTags.
func newRunTag() string { return "bench-" + randomHex(6) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
