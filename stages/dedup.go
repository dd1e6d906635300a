package stages

import (
	"context"
	"errors"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// DedupConfig configures dedup.
type DedupConfig struct {
	Window time.Duration `hcl:"window,optional" doc:"how long a (clusterGroupId, messageId) is remembered; copies arriving within it are ACKed and dropped"`
}

// Validate implements pipeline.Validator.
func (c *DedupConfig) Validate() error {
	if c.Window < time.Second {
		return &pipeline.FieldError{Field: "window", Err: errors.New("must be at least 1s")}
	}
	return nil
}

func init() {
	pipeline.Register(pipeline.Kind{
		Class:     pipeline.ClassStage,
		Name:      "dedup",
		Summary:   "Marks a data message whose (clusterGroupId, messageId) was stored within the window, or that repeats an earlier message of the same batch, as a duplicate: it is ACKed and not delivered again. The markers are written by persist, in the same transaction as the message, with the window as their TTL.",
		Example:   "stage \"dedup\" {\n  window = \"24h\"\n}\n",
		NewConfig: func() any { return &DedupConfig{Window: 24 * time.Hour} },
		Build: func(cfg any, bc *pipeline.BuildContext) (any, error) {
			return &Dedup{db: bc.Store.DB()}, nil
		},
	})
}

// Dedup is the dedup stage. It is a read-only early filter: persist repeats
// the check inside its write transaction, which is what makes a copy that is
// still between the two stages a duplicate too.
type Dedup struct {
	db   *badger.DB
	seen map[string]struct{}
}

var _ pipeline.Stage = (*Dedup)(nil)

// Process implements pipeline.Stage.
func (d *Dedup) Process(_ context.Context, batch []*pipeline.Envelope) ([]*pipeline.Envelope, error) {
	if d.seen == nil {
		d.seen = make(map[string]struct{}, len(batch))
	}
	clear(d.seen)
	txn := d.db.NewTransaction(false)
	defer txn.Discard()
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
		_, err := txn.Get(k)
		switch {
		case err == nil:
			e.Status = pipeline.Duplicate
		case !errors.Is(err, badger.ErrKeyNotFound):
			return nil, err
		}
	}
	return batch, nil
}
