package stages

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/pipeline"
)

func init() {
	pipeline.Register(pipeline.Kind{
		Class: pipeline.ClassStage,
		Name:  "persist",
		Summary: "Group commit: writes every data message of a batch, its dedup marker (TTL = dedup's window), one outbox " +
			"entry per recipient and, when the pipeline has a state stage, the new value of each SK/SA/SW key (last writer wins) in ONE synced Badger transaction, and only then passes the batch on. A message whose marker " +
			"is already stored (a copy that overtook the dedup stage) becomes a duplicate instead. Requests and control " +
			"frames are never stored.",
		Example:   "stage \"persist\" {}\n",
		NewConfig: func() any { return &noConfig{} },
		Build: func(_ any, bc *pipeline.BuildContext) (any, error) {
			p := &Persist{db: bc.Store.DB(), links: bc.Links, self: bc.Instance.ID, log: bc.Logger}
			if bc.HasStage("state") {
				sc, _ := bc.StageConfigs["state"].(*StateConfig)
				if sc == nil {
					sc = defaultStateConfig()
				}
				w, err := newStateWriter(sc, bc)
				if err != nil {
					return nil, err
				}
				p.state = w
			}
			if dc, ok := bc.StageConfigs["dedup"].(*DedupConfig); ok {
				p.window, p.claims, p.clock = dc.Window, dc.claims, dc.clock()
			}
			return p, bindStateMirrors(bc)
		},
	})
}

// Persist is the persist stage.
type Persist struct {
	db     *badger.DB
	links  *link.Registry
	self   string
	log    *slog.Logger
	window time.Duration // 0: the pipeline has no dedup stage, no markers
	// state, when the pipeline has a state stage, applies SK/SA/SW to the
	// replicated state in the same transaction (see stages/state.go).
	state *stateWriter
	// claims, with dedup's store = "redis", claims the committed messages
	// for this instance in the cluster group's Redis (stages/claim.go).
	claims *claimer
	// clock tells dedup about the batches and commits (nil without a dedup
	// stage).
	clock *commitClock
	seen  map[string]struct{}
}

var (
	_ pipeline.Stage    = (*Persist)(nil)
	_ pipeline.Isolated = (*Persist)(nil)
)

// Isolated implements pipeline.Isolated: persist waits for each synced
// commit in a goroutine of its own, while the messages that arrive meanwhile
// queue in front of it and become its next batch (group commit started by
// arrival), and the stages before and after it go on.
func (p *Persist) Isolated() bool { return true }

// Process implements pipeline.Stage. The batch is written in one synced
// transaction, or in several when it exceeds Badger's transaction limits;
// each message always lies whole in one of them. An error before anything
// was committed fails the batch; a failure after a partial commit marks the
// messages that were not committed Failed (no ACK: their senders
// retransmit) and passes the committed ones on.
func (p *Persist) Process(ctx context.Context, batch []*pipeline.Envelope) ([]*pipeline.Envelope, error) {
	p.clock.enter()
	defer p.clock.leave()
	if p.seen == nil {
		p.seen = make(map[string]struct{}, len(batch))
	}
	clear(p.seen)
	maxCount, maxSize := p.db.MaxBatchCount()*9/10, p.db.MaxBatchSize()*9/10
	threshold := p.db.Opts().ValueThreshold
	txn := p.db.NewTransaction(true)
	defer func() { txn.Discard() }()
	var pending, done []*pipeline.Envelope // in txn, not yet committed; committed
	var count, size int64
	committed := false
	commit := func() error {
		if err := p.clock.commit(txn.Commit); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		committed = true
		done, pending = append(done, pending...), pending[:0]
		txn, count, size = p.db.NewTransaction(true), 0, 0
		return nil
	}
	i := 0
	fail := func(err error) ([]*pipeline.Envelope, error) {
		if !committed {
			return nil, err
		}
		p.log.Error("store write failed after part of a batch was committed; the rest is not acknowledged", "err", err)
		for _, e := range pending {
			e.Status = pipeline.Failed
		}
		for _, e := range batch[i:] {
			if isData(e) {
				e.Status = pipeline.Failed
			}
		}
		return batch, nil
	}
	for ; i < len(batch); i++ {
		e := batch[i]
		if !isData(e) {
			continue
		}
		m := e.Msg
		marker := store.DedupKey(m.ClusterGroupID, m.MessageID)
		if p.window > 0 {
			if _, dup := p.seen[string(marker)]; dup {
				e.Status = pipeline.Duplicate
				continue
			}
			p.seen[string(marker)] = struct{}{}
			if _, err := txn.Get(marker); err == nil {
				e.Status = pipeline.Duplicate
				continue
			} else if !errors.Is(err, badger.ErrKeyNotFound) {
				return fail(err)
			}
		}
		e.Encoded = p.encode(e)
		n, sz := txnCost(e, len(marker), threshold)
		if n > maxCount || sz > maxSize {
			// Alone it is more than one transaction takes: it can never
			// be stored whole, so none of it is.
			delete(p.seen, string(marker))
			e.Encoded = nil
			reject(e, &slipstream.Error{Code: slipstream.CodeTooLarge, Text: fmt.Sprintf(
				"message too large to store for its %d recipients: about %d bytes in one store transaction, which takes at most %d "+
					"(15%% of the store's memtable; raise instance.memtable_size, or reach fewer links with targetedTags)",
				len(e.Recipients), sz, maxSize)})
			continue
		}
		if count > 0 && (count+n > maxCount || size+sz > maxSize) {
			if err := commit(); err != nil {
				return fail(err)
			}
		}
		if p.window > 0 {
			if err := txn.SetEntry(badger.NewEntry(marker, nil).WithTTL(p.window)); err != nil {
				return fail(fmt.Errorf("message %s: %w", m.MessageID, err))
			}
		}
		e.Seqs = make([]uint64, len(e.Recipients))
		for i, id := range e.Recipients {
			l := p.links.Get(id)
			if l == nil { // gone since tag_filter (an ephemeral link left): Seqs[i] stays 0
				continue
			}
			e.Seqs[i] = l.NextSeq()
			if err := txn.Set(store.OutboxKey(id, e.Seqs[i]), e.Encoded); err != nil {
				return fail(fmt.Errorf("message %s: %w", m.MessageID, err))
			}
		}
		if p.state != nil {
			if err := p.state.apply(txn, m); err != nil {
				return fail(fmt.Errorf("message %s: %w", m.MessageID, err))
			}
		}
		pending = append(pending, e)
		count, size = count+n, size+sz
	}
	if len(pending) > 0 {
		if err := p.clock.commit(txn.Commit); err != nil {
			return fail(fmt.Errorf("commit: %w", err))
		}
		done = append(done, pending...)
	}
	if p.claims != nil {
		p.claims.afterCommit(ctx, done)
	}
	return batch, nil
}

// txnCost estimates, from above, what e costs a Badger transaction: its
// entries (one outbox entry per recipient, its dedup marker, a state record)
// and their size as Badger counts it: key, value (or, for a value at or over
// the value-log threshold, a 12-byte pointer) and 12 bytes, plus a margin of
// 16 bytes per entry. The forwarded frame bounds the state record's value.
func txnCost(e *pipeline.Envelope, markerLen int, threshold int64) (n, size int64) {
	const overhead = 12 + 16
	value := int64(len(e.Encoded))
	if value >= threshold {
		value = 12
	}
	for _, id := range e.Recipients {
		size += int64(len(id)) + 11 + value + overhead // o/<link>\x00<seq>
	}
	size += int64(markerLen) + overhead // the marker has no value
	key := 0
	if e.Msg != nil {
		key = len(e.Msg.Key)
	}
	size += int64(key) + 2 + value + overhead // s/<key>
	return int64(len(e.Recipients)) + 2, size
}

// encode renders the message as forwarded (see forwardFrame).
func (p *Persist) encode(e *pipeline.Envelope) []byte { return forwardFrame(e, p.self) }
