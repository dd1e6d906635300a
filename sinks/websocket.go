package sinks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// Defaults of the websocket sink (CONFIG.md).
const (
	DefaultAckTimeout  = 10 * time.Second
	DefaultMaxAttempts = 3
	DefaultWindow      = 1024
	DefaultMemoryQueue = 512
	DefaultBackoffMax  = time.Minute
	DefaultMaxPending  = 1_000_000
	DefaultMaxAge      = 7 * 24 * time.Hour
)

// WebSocketConfig is the body of a `sink "websocket"` block.
type WebSocketConfig struct {
	AckTimeout  time.Duration `hcl:"ack_timeout,optional" doc:"how long to wait for a link's ACK before sending a delivery again"`
	MaxAttempts int           `hcl:"max_attempts,optional" doc:"ack timeouts a delivery may spend while its link is up before it is dead-lettered; 0 = retry forever"`
	Window      int           `hcl:"window,optional" doc:"most unacknowledged deliveries in flight per link"`
	MemoryQueue int           `hcl:"memory_queue,optional" doc:"deliveries buffered in memory per link before its writer falls back to reading its outbox on disk"`
	BackoffMax  time.Duration `hcl:"backoff_max,optional" doc:"longest wait between two sends of one delivery (the wait doubles from ack_timeout)"`
	MaxPending  int           `hcl:"max_pending,optional" doc:"most deliveries waiting in one link's outbox; beyond it the oldest move to the dead-letter store; 0 = unlimited"`
	MaxAge      time.Duration `hcl:"max_age,optional" doc:"deliveries whose message is older than this (by its timestamp) move from a link's outbox to the dead-letter store; 0 = unlimited"`

	// limitEvery is how often each writer checks max_pending and max_age
	// when nothing prompts it (default 30s; tests shorten it).
	limitEvery time.Duration
	// parkAfter is how long a writer must have had nothing to do before
	// it parks (default 1s; tests shorten it): a link with steady traffic,
	// even slow, keeps its goroutine rather than starting one per message.
	parkAfter time.Duration
}

// Validate implements pipeline.Validator.
func (c *WebSocketConfig) Validate() error {
	switch {
	case c.AckTimeout <= 0:
		return &pipeline.FieldError{Field: "ack_timeout", Err: errors.New("must be greater than 0")}
	case c.MaxAttempts < 0:
		return &pipeline.FieldError{Field: "max_attempts", Err: errors.New("must be 0 (retry forever) or more")}
	case c.Window <= 0:
		return &pipeline.FieldError{Field: "window", Err: errors.New("must be greater than 0")}
	case c.MemoryQueue < 0:
		return &pipeline.FieldError{Field: "memory_queue", Err: errors.New("must be 0 (always read from disk) or more")}
	case c.BackoffMax < c.AckTimeout:
		return &pipeline.FieldError{Field: "backoff_max", Err: fmt.Errorf("must be at least ack_timeout (%s)", c.AckTimeout)}
	case c.MaxPending < 0:
		return &pipeline.FieldError{Field: "max_pending", Err: errors.New("must be 0 (unlimited) or more")}
	case c.MaxAge < 0:
		return &pipeline.FieldError{Field: "max_age", Err: errors.New("must be 0 (unlimited) or more")}
	}
	return nil
}

func init() {
	pipeline.Register(pipeline.Kind{
		Class: pipeline.ClassSink,
		Name:  "websocket",
		Summary: "Delivers stored messages to links: one writer per link sends in order from memory while it keeps up and " +
			"from the link's durable outbox when it falls behind or comes back, keeps at most `window` deliveries unacked, " +
			"re-sends after ack_timeout with backoff while the link is up, and dead-letters after max_attempts. " +
			"An outbox holds at most max_pending deliveries, none older than max_age: beyond that the oldest move to the " +
			"dead-letter store.",
		Example: `sink "websocket" "links" {
  ack_timeout  = "10s"
  max_attempts = 3
  max_pending  = 1000000
  max_age      = "168h"
}
`,
		NewConfig: func() any {
			return &WebSocketConfig{AckTimeout: DefaultAckTimeout, MaxAttempts: DefaultMaxAttempts,
				Window: DefaultWindow, MemoryQueue: DefaultMemoryQueue, BackoffMax: DefaultBackoffMax,
				MaxPending: DefaultMaxPending, MaxAge: DefaultMaxAge}
		},
		Build: func(cfg any, bc *pipeline.BuildContext) (any, error) {
			return NewWebSocket(*cfg.(*WebSocketConfig), bc)
		},
	})
}

// WebSocket is the websocket sink. Its methods are safe for concurrent use.
//
// Lock order: Link.mu (held by the registry while it calls the outbox
// factory) before WebSocket.mu before Outbox.mu; Outbox.mu is never held
// while calling out of the outbox.
type WebSocket struct {
	cfg   WebSocketConfig
	store *store.Store
	links *link.Registry
	log   *slog.Logger
	m     *metrics
	// tracer makes one span per send (writer.go); nil: tracing is off.
	tracer trace.Tracer
	// afterRead, in tests, is called by a writer after each page it read
	// from its outbox in the store (set before any writer starts).
	afterRead func(link string)

	mu       sync.Mutex
	outboxes map[*Outbox]struct{}
	base     context.Context // from Start; nil before
	closed   bool
	stopTick context.CancelFunc // stops rouse
	ticking  sync.WaitGroup
}

var (
	_ pipeline.Sink    = (*WebSocket)(nil)
	_ pipeline.Starter = (*WebSocket)(nil)
	_ pipeline.Closer  = (*WebSocket)(nil)
)

// NewWebSocket builds the sink (what the kind's Build does) and installs its
// outbox factory on bc.Links, so every link gets an *Outbox. Writers start
// with Start.
func NewWebSocket(cfg WebSocketConfig, bc *pipeline.BuildContext) (*WebSocket, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.limitEvery <= 0 {
		cfg.limitEvery = defaultLimitEvery
	}
	if cfg.parkAfter <= 0 {
		cfg.parkAfter = defaultParkAfter
	}
	if bc.Store == nil || bc.Links == nil {
		return nil, errors.New("the websocket sink needs the store and the link registry")
	}
	log := bc.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(bc.Metrics)
	if err != nil {
		return nil, err
	}
	s := &WebSocket{cfg: cfg, store: bc.Store, links: bc.Links, log: log, m: m, outboxes: map[*Outbox]struct{}{}, tracer: bc.Tracer}
	m.outboxes.add(s)
	bc.Links.SetOutboxFactory(s.newOutbox)
	return s, nil
}

// newOutbox is the registry's outbox factory. The registry calls it with
// l's lock held: it must not call l's locking methods (Tags, Acks, Conn...).
func (s *WebSocket) newOutbox(l *link.Link) link.Outbox {
	o := newOutbox(s, l)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		o.closeNow()
		return o
	}
	s.outboxes[o] = struct{}{}
	if s.base != nil {
		o.start(s.base)
	}
	return o
}

// forget drops a closed outbox.
func (s *WebSocket) forget(o *Outbox) {
	s.mu.Lock()
	delete(s.outboxes, o)
	s.mu.Unlock()
}

// Start implements pipeline.Starter: it starts the writers of every link
// known so far; outboxes made later start at once. ctx is the instance's
// hard-stop context: cancelling it stops the writers (Close still must be
// called). Called once by the runner, before any source runs.
func (s *WebSocket) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("websocket sink: closed")
	}
	if s.base != nil {
		return nil
	}
	s.base = ctx
	for o := range s.outboxes {
		o.start(ctx)
	}
	tctx, stop := context.WithCancel(ctx)
	s.stopTick = stop
	s.ticking.Go(func() { s.rouse(tctx) })
	return nil
}

// rouse starts the parked writers of durable links twice per limitEvery,
// so that their periodic pass (the outbox limits, and the rescan that finds
// entries Badger's GC brought back) runs while their links are idle.
func (s *WebSocket) rouse(ctx context.Context) {
	t := time.NewTicker(max(s.cfg.limitEvery/2, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, o := range s.durable() {
			o.mu.Lock()
			if o.started && !o.running && !o.closed && !time.Now().Before(o.w.limitsAt) {
				o.signalLocked()
			}
			o.mu.Unlock()
		}
	}
}

// Deliver implements pipeline.Sink: for every accepted, persisted envelope
// it notifies the outbox of each recipient link of its entry. It never
// blocks on the network and never fails: deliveries to links that are slow,
// down or gone wait in (or were dropped with) their outboxes. Called from
// the fanout stage's goroutine, in order.
func (s *WebSocket) Deliver(_ context.Context, batch []*pipeline.Envelope) error {
	for _, e := range batch {
		if e.Status != pipeline.Accepted || e.Encoded == nil {
			continue
		}
		for i, id := range e.Recipients {
			if i >= len(e.Seqs) {
				break
			}
			if e.Seqs[i] == 0 { // the link left before persist
				continue
			}
			l := s.links.Get(id)
			if l == nil {
				continue
			}
			switch ob := l.Outbox().(type) {
			case *Outbox:
				ob.notify(e.Seqs[i], e.Encoded, e.Msg) // e.Msg is what persist encoded
			case nil:
			default:
				ob.Notify(e.Seqs[i], e.Encoded)
			}
		}
	}
	return nil
}

// Close implements pipeline.Closer: it stops every writer and returns once
// they have exited; pending deliveries stay in the store. Outboxes made
// afterwards are inert. Called by the runner after the pipeline drained;
// safe to call again.
func (s *WebSocket) Close() error {
	s.mu.Lock()
	s.closed = true
	if s.stopTick != nil {
		s.stopTick()
	}
	obs := make([]*Outbox, 0, len(s.outboxes))
	for o := range s.outboxes {
		obs = append(obs, o)
	}
	s.mu.Unlock()
	s.ticking.Wait()
	for _, o := range obs {
		o.Close()
	}
	s.m.outboxes.remove(s)
	return nil
}

// durable returns the outboxes of durable links (for the gauges).
func (s *WebSocket) durable() []*Outbox {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Outbox, 0, len(s.outboxes))
	for o := range s.outboxes {
		if o.durable {
			out = append(out, o)
		}
	}
	return out
}
