package stages

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/slipstream-sync/slipstream/internal/redisconn"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// DedupConfig configures dedup.
type DedupConfig struct {
	Window   time.Duration `hcl:"window,optional" doc:"how long a (clusterGroupId, messageId) is remembered; copies arriving within it are ACKed and dropped"`
	Store    string        `hcl:"store,optional" doc:"badger: this instance's window only; redis: also one window shared by every instance of the cluster group (instance.cluster_group) in redis_url, so a message sent to several of them is delivered once (see docs/redis.md)"`
	RedisURL string        `hcl:"redis_url,optional" doc:"the cluster group's Redis (store = \"redis\"): redis://host:port/db, or rediss:// for TLS"`

	// claims is the cluster group's Redis, made by dedup's Build and used
	// by persist's post-commit claim (stages/claim.go); dedup closes it.
	claims *claimer
	// commits is shared by dedup and persist (see commitClock).
	commits *commitClock
}

// clock returns the commit clock dedup and persist share, made by whichever
// of their Builds runs first.
func (c *DedupConfig) clock() *commitClock {
	if c.commits == nil {
		c.commits = &commitClock{}
	}
	return c.commits
}

// commitClock is what persist tells dedup about its work, so that dedup's
// early check never waits for a group commit and is not made twice under
// load.
//
// Every Badger read transaction waits, when it starts, for every commit
// already under way (its fsync included): a fresh snapshot per batch would
// make dedup wait for persist's previous batch, in lockstep with it, and
// each message would wait for two fsyncs instead of one. So while persist
// is processing a batch, dedup only marks the repeats within its batch and
// leaves the store lookup to persist, which makes it anyway inside its
// write transaction (the authoritative check: a copy may be between the two
// stages); under load that is most batches, and each message is looked up
// once instead of twice. When persist is idle, dedup looks the markers up
// in a read snapshot that it keeps while it is as good as a fresh one
// (persist, the only writer of markers, has completed no commit since it
// was taken; a fresh one could still wait for the outbox writers' deletes),
// for at most maxSnapshotAge. Markers are never deleted (they expire, and
// expiry is judged when they are read), so a snapshot that holds a marker
// is never wrong about it.
type commitClock struct {
	done atomic.Uint64 // commits persist completed (or failed)
	busy atomic.Int32  // persist is processing a batch (its commits included)
}

// enter and leave bracket persist's Process.
func (c *commitClock) enter() {
	if c != nil {
		c.busy.Add(1)
	}
}

func (c *commitClock) leave() {
	if c != nil {
		c.busy.Add(-1)
	}
}

// commit runs persist's commit fn, counting it.
func (c *commitClock) commit(fn func() error) error {
	if c == nil {
		return fn()
	}
	err := fn()
	c.done.Add(1)
	return err
}

// maxSnapshotAge bounds how long dedup keeps one read snapshot (an open
// read transaction keeps Badger from discarding older versions).
const maxSnapshotAge = time.Second

// Validate implements pipeline.Validator.
func (c *DedupConfig) Validate() error {
	switch {
	case c.Window < time.Second:
		return &pipeline.FieldError{Field: "window", Err: errors.New("must be at least 1s")}
	case c.Store != "badger" && c.Store != "redis":
		return &pipeline.FieldError{Field: "store", Err: fmt.Errorf("must be badger or redis, got %q", c.Store)}
	case c.Store == "redis" && c.RedisURL == "":
		return &pipeline.FieldError{Field: "redis_url", Err: errors.New(`required when store = "redis"`)}
	case c.Store == "redis":
		if _, err := redisconn.ParseURL(c.RedisURL); err != nil {
			return &pipeline.FieldError{Field: "redis_url", Err: err}
		}
	case c.RedisURL != "":
		return &pipeline.FieldError{Field: "redis_url", Err: errors.New(`only used with store = "redis"; set store = "redis" or remove it`)}
	}
	return nil
}

func init() {
	pipeline.Register(pipeline.Kind{
		Class:   pipeline.ClassStage,
		Name:    "dedup",
		Summary: "Marks a data message whose (clusterGroupId, messageId) was stored within the window, or that repeats an earlier message of the same batch, as a duplicate: it is ACKed and not delivered again. The markers are written by persist, in the same transaction as the message, with the window as their TTL. With store = \"redis\", the instances of a cluster group also share one window in Redis: persist claims each message there after its commit, and a message another instance claimed first is ACKed but not delivered by this one; Redis unreachable means local dedup only (never a lost message).",
		Example: "stage \"dedup\" {\n  window = \"24h\"\n  # store     = \"redis\"                     # one window shared by the cluster group\n" +
			"  # redis_url = \"redis://127.0.0.1:6379/0\"\n}\n",
		NewConfig: func() any { return &DedupConfig{Window: 24 * time.Hour, Store: "badger"} },
		Build: func(cfg any, bc *pipeline.BuildContext) (any, error) {
			dc := cfg.(*DedupConfig)
			d := &Dedup{db: bc.Store.DB(), clock: dc.clock()}
			if dc.Store == "redis" {
				c, err := newClaimer(dc, bc)
				if err != nil {
					return nil, err
				}
				dc.claims, d.claims = c, c
			}
			return d, nil
		},
	})
}

// Dedup is the dedup stage. It is a read-only early filter: persist repeats
// the check inside its write transaction, which is what makes a copy that is
// still between the two stages a duplicate too. It never waits for a group
// commit (see commitClock).
type Dedup struct {
	db     *badger.DB
	seen   map[string]struct{}
	claims *claimer // store = "redis": the cluster group's claims; nil otherwise

	// The read snapshot kept between batches (see commitClock).
	clock  *commitClock
	txn    *badger.Txn
	txnAt  time.Time // when it was taken
	txnSeq uint64    // clock.done when it was taken
}

var (
	_ pipeline.Stage  = (*Dedup)(nil)
	_ pipeline.Closer = (*Dedup)(nil)
)

// Close implements pipeline.Closer.
func (d *Dedup) Close() error {
	if d.txn != nil {
		d.txn.Discard()
		d.txn = nil
	}
	if d.claims != nil {
		return d.claims.Close()
	}
	return nil
}

// Process implements pipeline.Stage. With store = "redis", the messages
// that are new here are then checked against the cluster group's claims.
func (d *Dedup) Process(ctx context.Context, batch []*pipeline.Envelope) ([]*pipeline.Envelope, error) {
	if d.seen == nil {
		d.seen = make(map[string]struct{}, len(batch))
	}
	clear(d.seen)
	var txn *badger.Txn
	if d.clock.busy.Load() == 0 {
		txn = d.snapshot()
	} // else persist is at work: its own lookup will do (see commitClock)
	for _, e := range batch {
		if !isData(e) {
			continue
		}
		k := store.DedupKey(e.Msg.ClusterGroupID, e.Msg.MessageID)
		if _, dup := d.seen[string(k)]; dup {
			e.Status = pipeline.Duplicate
			continue
		}
		d.seen[string(k)] = struct{}{}
		if txn == nil {
			continue
		}
		_, err := txn.Get(k)
		switch {
		case err == nil:
			e.Status = pipeline.Duplicate
		case !errors.Is(err, badger.ErrKeyNotFound):
			d.txn.Discard()
			d.txn = nil
			return nil, err
		}
	}
	if d.claims != nil {
		d.claims.check(ctx, batch)
	}
	return batch, nil
}

// snapshot returns the read transaction to check a batch against: the one
// kept from an earlier batch when persist has committed nothing since, else
// a new one (see commitClock).
func (d *Dedup) snapshot() *badger.Txn {
	now := time.Now()
	if d.txn != nil {
		if now.Sub(d.txnAt) < maxSnapshotAge && d.clock.done.Load() == d.txnSeq {
			return d.txn
		}
		d.txn.Discard()
	}
	d.txnSeq = d.clock.done.Load() // before the snapshot: it holds at least these commits
	d.txn, d.txnAt = d.db.NewTransaction(false), now
	return d.txn
}
