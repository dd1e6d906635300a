package stages

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/slipstream-sync/slipstream/internal/redisconn"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/telemetry"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// Cluster-group dedup in Redis (dedup's store = "redis"), and persist's
// other hooks.
//
// Several instances of one cluster group share one dedup window: the
// instance that first claims (clusterGroupId, messageId) in Redis delivers
// the message, the others ACK it and deliver nothing. The claim is made
// AFTER persist's durable commit, so a message is never lost:
//
//  1. persist commits the message as always (marker, outbox entries, state);
//  2. it claims every committed message in one pipeline:
//     SET slipstream:dedup:<len(cg)>:<cg>:<id> <instanceId> NX GET PX <window>;
//  3. a message claimed by ANOTHER instance becomes a Duplicate: its outbox
//     entries are deleted in one transaction before fanout (it is ACKed to
//     the sender, not delivered by this instance). A claim held by this
//     instance (a retransmission after a restart) is ours.
//
// The dedup stage also reads the claims (GET, pipelined) before persist, as
// an early filter. Redis unreachable: local dedup only (at-least-once;
// receivers dedup), logged once per outage and counted; every Redis call
// has a short timeout, and after a failure Redis is not tried again for a
// second, so an outage never stalls the pipeline for long.
//
// Crash window: a crash between the commit (1) and the claim (2) leaves the
// message committed but unclaimed; after the restart it is delivered from
// the outbox, and if another instance claimed it meanwhile, both deliver it
// (a duplicate, never a loss). So can a writer that reads a link's outbox
// from disk between (1) and (3).

const (
	// claimTimeout bounds each Redis round trip of a batch.
	claimTimeout = 500 * time.Millisecond
	// claimPause is how long Redis is left alone after a failure.
	claimPause = time.Second
)

// claimer talks to the cluster group's Redis.
type claimer struct {
	client *redis.Client
	db     *badger.DB
	self   string
	window time.Duration
	log    *slog.Logger
	count  *prometheus.CounterVec // op (check, claim), outcome

	mu         sync.Mutex
	pauseUntil time.Time
	down       bool // in an outage (logged once)
}

// newClaimer connects lazily to the Redis of dc.RedisURL.
func newClaimer(dc *DedupConfig, bc *pipeline.BuildContext) (*claimer, error) {
	client, err := redisconn.New(dc.RedisURL, claimTimeout)
	if err != nil {
		return nil, fmt.Errorf("redis_url: %w", err)
	}
	c := &claimer{client: client, db: bc.Store.DB(), self: bc.Instance.ID, window: dc.Window, log: bc.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.count, err = telemetry.RegisterShared(bc.Metrics, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipstream_dedup_redis_total",
		Help: "Cluster-group dedup in Redis (dedup store = \"redis\"), per message, by op (check: dedup's early read; claim: after persist's commit) and outcome: new (nobody held it; claimed), ours (held by this instance), theirs (held by another instance of the group: a duplicate), unavailable (Redis failed or is paused after a failure: local dedup only).",
	}, []string{"op", "outcome"}))
	if err != nil {
		_ = c.client.Close()
		return nil, err
	}
	return c, nil
}

// claimKey is slipstream:dedup:<cg>:<id>, with the cluster group's length
// before it so that no (cg, id) pair can be read as another.
func claimKey(cluster, id string) string {
	return "slipstream:dedup:" + strconv.Itoa(len(cluster)) + ":" + cluster + ":" + id
}

// available reports whether Redis may be tried now.
func (c *claimer) available() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().After(c.pauseUntil)
}

// result records the outcome of a round trip: a failure pauses Redis use
// and is logged once per outage.
func (c *claimer) result(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err != nil && !c.down:
		c.down = true
		c.log.Warn("cluster dedup: Redis unavailable; deduplicating locally only (duplicates across the cluster group are possible)", "err", err)
	case err == nil && c.down:
		c.down = false
		c.log.Info("cluster dedup: Redis reachable again")
	}
	if err != nil {
		c.pauseUntil = time.Now().Add(claimPause)
	}
}

// acceptedData returns the accepted data envelopes of batch.
func acceptedData(batch []*pipeline.Envelope) []*pipeline.Envelope {
	var out []*pipeline.Envelope
	for _, e := range batch {
		if isData(e) {
			out = append(out, e)
		}
	}
	return out
}

// check marks the messages already claimed by another instance Duplicate
// (dedup's early filter).
func (c *claimer) check(ctx context.Context, batch []*pipeline.Envelope) {
	es := acceptedData(batch)
	outcomes := c.roundTrip(ctx, "check", es, func(ctx context.Context, pipe redis.Pipeliner, e *pipeline.Envelope) redisResult {
		return pipe.Get(ctx, claimKey(e.Msg.ClusterGroupID, e.Msg.MessageID))
	})
	for i, o := range outcomes {
		if o == "theirs" {
			es[i].Status = pipeline.Duplicate
		}
	}
}

// redisResult is a GET or SET ... GET answer: the holder of a claim.
type redisResult interface{ Result() (string, error) }

// roundTrip sends one command per envelope of es in one pipeline and
// returns, counted under op, each one's outcome (see outcome); nil when
// Redis failed or is paused after a failure (counted unavailable).
func (c *claimer) roundTrip(ctx context.Context, op string, es []*pipeline.Envelope,
	cmd func(context.Context, redis.Pipeliner, *pipeline.Envelope) redisResult) []string {
	if len(es) == 0 {
		return nil
	}
	if !c.available() {
		c.count.WithLabelValues(op, "unavailable").Add(float64(len(es)))
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, claimTimeout)
	defer cancel()
	pipe := c.client.Pipeline()
	cmds := make([]redisResult, len(es))
	for i, e := range es {
		cmds[i] = cmd(ctx, pipe, e)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		c.result(err)
		c.count.WithLabelValues(op, "unavailable").Add(float64(len(es)))
		return nil
	}
	c.result(nil)
	outcomes := make([]string, len(es))
	for i := range cmds {
		outcomes[i] = c.outcome(cmds[i])
		c.count.WithLabelValues(op, outcomes[i]).Inc()
	}
	return outcomes
}

// outcome classifies a claim's holder: new (none), ours, theirs.
func (c *claimer) outcome(cmd redisResult) string {
	switch v, err := cmd.Result(); {
	case errors.Is(err, redis.Nil):
		return "new"
	case err != nil:
		return "unavailable"
	case v == c.self:
		return "ours"
	}
	return "theirs"
}

// afterCommit is persist's post-commit hook: it claims the committed
// messages, and turns those another instance claimed first into
// duplicates, deleting their outbox entries in one transaction.
func (c *claimer) afterCommit(ctx context.Context, committed []*pipeline.Envelope) {
	es := acceptedData(committed)
	outcomes := c.roundTrip(ctx, "claim", es, func(ctx context.Context, pipe redis.Pipeliner, e *pipeline.Envelope) redisResult {
		return pipe.SetArgs(ctx, claimKey(e.Msg.ClusterGroupID, e.Msg.MessageID), c.self,
			redis.SetArgs{Mode: "NX", Get: true, TTL: c.window})
	})
	var theirs []*pipeline.Envelope
	for i, o := range outcomes {
		if o == "theirs" {
			theirs = append(theirs, es[i])
		}
	}
	if len(theirs) == 0 {
		return
	}
	err := c.db.Update(func(txn *badger.Txn) error {
		for _, e := range theirs {
			for i, id := range e.Recipients {
				if i < len(e.Seqs) && e.Seqs[i] != 0 {
					if err := txn.Delete(store.OutboxKey(id, e.Seqs[i])); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
	if err != nil { // the entries stay: delivered twice in the group, never lost
		c.log.Warn("cluster dedup: removing the deliveries of messages claimed by another instance failed; they are delivered", "err", err)
		return
	}
	for _, e := range theirs {
		e.Status = pipeline.Duplicate
	}
}

// Close closes the Redis client.
func (c *claimer) Close() error { return c.client.Close() }

// StateMirror is implemented by sinks that mirror the replicated state (the
// redis sink). persist's Build binds each sink of its pipeline that mirrors
// state to the state stage's tombstone_ttl, and refuses the pipeline when
// it has no state stage (there would be no state to mirror).
type StateMirror interface {
	MirrorState(tombstoneTTL time.Duration)
}

// bindStateMirrors is called by persist's Build.
func bindStateMirrors(bc *pipeline.BuildContext) error {
	for _, s := range bc.Sinks {
		m, ok := s.(StateMirror)
		if !ok {
			continue
		}
		if !bc.HasStage("state") {
			return fmt.Errorf("pipeline %q: sink redis mirrors the replicated state, which needs a state stage: add stage \"state\" {} after ack", bc.Pipeline)
		}
		sc, _ := bc.StageConfigs["state"].(*StateConfig)
		if sc == nil {
			sc = defaultStateConfig()
		}
		m.MirrorState(sc.TombstoneTTL)
	}
	return nil
}
