package stages

import (
	"context"
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/pipeline"
)

func init() {
	pipeline.Register(pipeline.Kind{
		Class: pipeline.ClassStage,
		Name:  "persist",
		Summary: "Group commit: writes every data message of a batch, its dedup marker (TTL = dedup's window) and one outbox " +
			"entry per recipient in ONE synced Badger transaction, and only then passes the batch on. A message whose marker " +
			"is already stored (a copy that overtook the dedup stage) becomes a duplicate instead. Requests and control " +
			"frames are never stored.",
		Example:   "stage \"persist\" {}\n",
		NewConfig: func() any { return &noConfig{} },
		Build: func(_ any, bc *pipeline.BuildContext) (any, error) {
			p := &Persist{db: bc.Store.DB(), links: bc.Links, self: bc.Instance.ID}
			if dc, ok := bc.StageConfigs["dedup"].(*DedupConfig); ok {
				p.window = dc.Window
			}
			return p, nil
		},
	})
}

// Persist is the persist stage.
type Persist struct {
	db     *badger.DB
	links  *link.Registry
	self   string
	window time.Duration // 0: the pipeline has no dedup stage, no markers
	seen   map[string]struct{}
}

var _ pipeline.Stage = (*Persist)(nil)

// Process implements pipeline.Stage. An error (the store cannot be written)
// fails the batch: nothing of it is acknowledged.
func (p *Persist) Process(_ context.Context, batch []*pipeline.Envelope) ([]*pipeline.Envelope, error) {
	if p.seen == nil {
		p.seen = make(map[string]struct{}, len(batch))
	}
	clear(p.seen)
	txn := p.db.NewTransaction(true)
	defer func() { txn.Discard() }()
	for _, e := range batch {
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
				return nil, err
			}
		}
		e.Encoded = p.encode(e)
		entries := make([]*badger.Entry, 0, 1+len(e.Recipients))
		if p.window > 0 {
			entries = append(entries, badger.NewEntry(marker, nil).WithTTL(p.window))
		}
		e.Seqs = make([]uint64, len(e.Recipients))
		for i, id := range e.Recipients {
			l := p.links.Get(id)
			if l == nil { // gone since tag_filter (an ephemeral link left)
				continue
			}
			e.Seqs[i] = l.NextSeq()
			entries = append(entries, badger.NewEntry(store.OutboxKey(id, e.Seqs[i]), e.Encoded))
		}
		if err := setAll(txn, entries); errors.Is(err, badger.ErrTxnTooBig) {
			// Commit what the batch holds so far and start a new transaction:
			// each message stays whole in one of them.
			if err := txn.Commit(); err != nil {
				return nil, fmt.Errorf("commit: %w", err)
			}
			txn = p.db.NewTransaction(true)
			if err := setAll(txn, entries); err != nil {
				return nil, fmt.Errorf("message %s does not fit one transaction: %w", m.MessageID, err)
			}
		} else if err != nil {
			return nil, err
		}
	}
	if err := txn.Commit(); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	return batch, nil
}

func setAll(txn *badger.Txn, entries []*badger.Entry) error {
	for _, en := range entries {
		if err := txn.SetEntry(en); err != nil {
			return err
		}
	}
	return nil
}

// encode renders the message as forwarded: sourceInstanceId is this
// instance, and the trace context is this instance's span when tracing is on
// (otherwise the incoming traceparent rides on unchanged).
func (p *Persist) encode(e *pipeline.Envelope) []byte {
	m := e.Msg
	m.SourceInstanceID = p.self
	if sc := trace.SpanContextFromContext(e.Context()); sc.IsValid() {
		carrier := propagation.MapCarrier{}
		traceContext.Inject(e.Context(), carrier)
		m.TraceParent = carrier.Get("traceparent")
		m.TraceState = carrier.Get("tracestate")
	}
	return slipstream.Encode(m)
}
