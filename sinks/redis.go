package sinks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/redisconn"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/telemetry"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// RedisConfig is the body of a `sink "redis"` block.
type RedisConfig struct {
	URL       string `hcl:"url,optional" doc:"the Redis to mirror the state into: redis://[user:password@]host:port/db, or rediss:// for TLS"`
	KeyPrefix string `hcl:"key_prefix,optional" doc:"prefix of every key written: <prefix><key> holds the value, <prefix>v:<key> its version"`
}

// Validate implements pipeline.Validator.
func (c *RedisConfig) Validate() error {
	if c.URL == "" {
		return &pipeline.FieldError{Field: "url", Err: errors.New(`required, e.g. "redis://127.0.0.1:6379/0"`)}
	}
	if _, err := redisconn.ParseURL(c.URL); err != nil {
		return &pipeline.FieldError{Field: "url", Err: err}
	}
	return nil
}

// DefaultRedisTombstoneTTL is how long a deleted key's version stays in
// Redis when the sink is not bound to a state stage's tombstone_ttl (the
// state stage's default).
const DefaultRedisTombstoneTTL = 30 * 24 * time.Hour

func init() {
	pipeline.Register(pipeline.Kind{
		Class: pipeline.ClassSink,
		Name:  "redis",
		Summary: "Mirrors the instance's replicated state into a Redis: SK -> a string holding the JSON value, SA -> a list of " +
			"the JSON elements, SW -> a sorted set (member -> weight), SK null -> DEL. Every key is replaced atomically " +
			"with its version (timestamp, origin, messageId) beside it, and only by a newer version, so writes are " +
			"idempotent and never reordered. The state in Badger is the source of truth: the sink re-applies every " +
			"key at start and after each reconnection, so Redis catches up after an outage. Needs a state stage in " +
			"the pipeline. See docs/redis.md.",
		Example: `sink "redis" "mirror" {
  url        = "redis://127.0.0.1:6379/0"
  key_prefix = "slipstream:"
}
`,
		NewConfig: func() any { return &RedisConfig{KeyPrefix: "slipstream:"} },
		Build: func(cfg any, bc *pipeline.BuildContext) (any, error) {
			return NewRedis(*cfg.(*RedisConfig), bc)
		},
	})
}

// Redis is the redis sink. Deliver only notes which keys changed; one worker
// goroutine (started by Start) reads each noted key's record from the store
// and applies it to Redis, so Deliver never waits on the network.
type Redis struct {
	cfg    RedisConfig
	name   string
	store  *store.Store
	client *redis.Client
	log    *slog.Logger
	m      redisMetrics

	mu      sync.Mutex
	pending map[string]struct{} // keys to apply
	taken   int                 // keys the worker took and has not applied yet
	tombTTL time.Duration
	bound   bool // MirrorState was called (a pipeline with a state stage uses the sink)
	started bool
	closed  bool
	wake    chan struct{} // cap 1
	cancel  context.CancelFunc
	done    chan struct{}
	up      atomic.Bool // the last Redis operation succeeded (after a resync)

	// backoff bounds the waits between reconnection attempts (tests shorten it).
	backoffMin, backoffMax time.Duration
}

var (
	_ pipeline.Sink    = (*Redis)(nil)
	_ pipeline.Starter = (*Redis)(nil)
	_ pipeline.Closer  = (*Redis)(nil)
)

type redisMetrics struct {
	writes    *prometheus.CounterVec // sink, outcome
	pending   prometheus.Gauge
	connected prometheus.Gauge
}

// NewRedis builds the sink (what the kind's Build does). It does not
// connect: Start does.
func NewRedis(cfg RedisConfig, bc *pipeline.BuildContext) (*Redis, error) {
	client, err := redisconn.New(cfg.URL, 5*time.Second) // the worker retries, after a resync
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	name := strings.TrimPrefix(bc.Name, "redis.")
	r := &Redis{cfg: cfg, name: name, store: bc.Store, client: client, log: bc.Logger,
		pending: map[string]struct{}{}, tombTTL: DefaultRedisTombstoneTTL, wake: make(chan struct{}, 1),
		backoffMin: 100 * time.Millisecond, backoffMax: 10 * time.Second}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if err := r.registerMetrics(bc.Metrics); err != nil {
		_ = r.client.Close()
		return nil, err
	}
	return r, nil
}

func (r *Redis) registerMetrics(reg prometheus.Registerer) error {
	writes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipstream_redis_sink_writes_total",
		Help: "Keys the redis sink applied to Redis, by sink and outcome: applied (Redis held an older version or none), stale (Redis already held this or a newer version), error (Redis unreachable or failing: retried after a resync).",
	}, []string{"sink", "outcome"})
	pending := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "slipstream_redis_sink_pending_keys",
		Help: "Keys whose latest state the redis sink has not yet applied to Redis, by sink.",
	}, []string{"sink"})
	connected := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "slipstream_redis_sink_connected",
		Help: "1 while the redis sink's last Redis operation succeeded, 0 during an outage, by sink.",
	}, []string{"sink"})
	if reg == nil {
		r.m = redisMetrics{writes: writes, pending: pending.WithLabelValues(r.name), connected: connected.WithLabelValues(r.name)}
		return nil
	}
	var err error
	if writes, err = telemetry.RegisterShared(reg, writes); err != nil {
		return err
	}
	if pending, err = telemetry.RegisterShared(reg, pending); err != nil {
		return err
	}
	if connected, err = telemetry.RegisterShared(reg, connected); err != nil {
		return err
	}
	r.m = redisMetrics{writes: writes, pending: pending.WithLabelValues(r.name), connected: connected.WithLabelValues(r.name)}
	return nil
}

// MirrorState binds the sink to a pipeline's state stage: deleted keys keep
// their version in Redis for tombstoneTTL. The persist stage calls it at
// build time (and refuses a pipeline that has a redis sink but no state
// stage).
func (r *Redis) MirrorState(tombstoneTTL time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.bound || tombstoneTTL > r.tombTTL {
		r.tombTTL = tombstoneTTL
	}
	r.bound = true
}

// Deliver implements pipeline.Sink: it notes the keys of the accepted
// SK/SA/SW messages of the batch for the worker. It never blocks: the keys
// wait in memory (one entry per distinct key) and the records in the store.
func (r *Redis) Deliver(_ context.Context, batch []*pipeline.Envelope) error {
	noted := false
	r.mu.Lock()
	for _, e := range batch {
		// A duplicate that persist committed before it lost its cluster
		// group claim (Seqs set) has changed the state too.
		committed := e.Status == pipeline.Accepted || (e.Status == pipeline.Duplicate && e.Seqs != nil)
		if !committed || e.Msg == nil || e.Msg.IsReply() {
			continue
		}
		switch e.Msg.Type {
		case slipstream.TypeSK, slipstream.TypeSA, slipstream.TypeSW:
			r.pending[e.Msg.Key] = struct{}{}
			noted = true
		}
	}
	n := len(r.pending)
	r.mu.Unlock()
	if noted {
		r.m.pending.Set(float64(n))
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// Start implements pipeline.Starter: it starts the worker, which first
// applies every state record of the store (the resync) and then the keys
// Deliver notes.
func (r *Redis) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started || r.closed {
		return nil
	}
	r.started = true
	wctx, cancel := context.WithCancel(ctx)
	r.cancel, r.done = cancel, make(chan struct{})
	go r.run(wctx)
	return nil
}

// Close implements pipeline.Closer: it stops the worker and closes the
// connection. Keys not yet applied are not lost: the next start resyncs.
// It is idempotent.
func (r *Redis) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	cancel, done := r.cancel, r.done
	r.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	return r.client.Close()
}

// Flush waits until every key noted so far has been applied, or ctx ends.
// Tests and shutdown diagnostics use it.
func (r *Redis) Flush(ctx context.Context) error {
	for {
		r.mu.Lock()
		n := len(r.pending) + r.taken
		r.mu.Unlock()
		if n == 0 && r.connected() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redis sink %s: %d keys not applied: %w", r.name, n, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (r *Redis) connected() bool { return r.up.Load() }
