package stages

import (
	"context"
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/telemetry"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// StateConfig configures the state stage.
type StateConfig struct {
	TombstoneTTL time.Duration `hcl:"tombstone_ttl,optional" doc:"how long a deleted key (SK with null) is remembered, so that an older write arriving later cannot bring it back; a write older than the delete that arrives after this is applied"`
}

// Validate implements pipeline.Validator.
func (c *StateConfig) Validate() error {
	if c.TombstoneTTL < time.Second {
		return &pipeline.FieldError{Field: "tombstone_ttl", Err: errors.New("must be at least 1s")}
	}
	return nil
}

// DefaultTombstoneTTL outlives the websocket sink's default max_age (168h),
// the longest a message waits in an outbox before it is dead-lettered.
const DefaultTombstoneTTL = 30 * 24 * time.Hour

func defaultStateConfig() *StateConfig { return &StateConfig{TombstoneTTL: DefaultTombstoneTTL} }

func init() {
	pipeline.Register(pipeline.Kind{
		Class: pipeline.ClassStage,
		Name:  "state",
		Summary: "Keeps the latest value of every key set by SK, SA and SW, decided by last writer wins on (timestamp, " +
			"originInstanceId, messageId), so instances that saw the same messages hold the same state whatever the " +
			"order; SK with null deletes (a tombstone is kept for tombstone_ttl). The values are written by persist, " +
			"in the same transaction as the message, when the pipeline has this stage. This stage answers GK, GA and " +
			"GW requests targeted at this instance with a reply (inReplyTo, key, value, found) to the link the " +
			"request came in on. Messages whose targetedTags do not match this instance's tags are not applied here.",
		Example:   "stage \"state\" {\n  tombstone_ttl = \"720h\"\n}\n",
		NewConfig: func() any { return defaultStateConfig() },
		Build: func(_ any, bc *pipeline.BuildContext) (any, error) {
			s := &State{db: bc.Store.DB(), self: bc.Instance.ID, cluster: bc.Instance.ClusterGroup,
				tags: bc.Instance.Tags, now: time.Now}
			var err error
			s.reads, err = telemetry.RegisterShared(bc.Metrics, prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "slipstream_state_reads_total",
				Help: "GK/GA/GW requests answered by this instance, by type and outcome (found, missing, mismatch: the key was set by another type).",
			}, []string{"type", "outcome"}))
			return s, err
		},
	})
}

// isStateWrite reports whether t sets state (SK, SA, SW).
func isStateWrite(t slipstream.Type) bool {
	return t == slipstream.TypeSK || t == slipstream.TypeSA || t == slipstream.TypeSW
}

// stateWriter applies SK/SA/SW messages to the replicated state inside
// persist's transaction.
type stateWriter struct {
	ttl    time.Duration
	tags   []string
	writes *prometheus.CounterVec
}

func newStateWriter(c *StateConfig, bc *pipeline.BuildContext) (*stateWriter, error) {
	w := &stateWriter{ttl: c.TombstoneTTL, tags: bc.Instance.Tags}
	var err error
	w.writes, err = telemetry.RegisterShared(bc.Metrics, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipstream_state_writes_total",
		Help: "SK/SA/SW messages seen by the state, by outcome: applied, stale (an older write than the key's current one: last writer wins), not_targeted (targetedTags exclude this instance).",
	}, []string{"outcome"}))
	return w, err
}

// stateRecord is the record m would write.
func stateRecord(m *slipstream.Message) *store.StateRecord {
	r := &store.StateRecord{Type: string(m.Type), Timestamp: m.Timestamp, Origin: m.OriginInstanceID, MessageID: m.MessageID}
	if m.Type == slipstream.TypeSK && rawIsNull(m.Value) {
		r.Deleted = true
	} else {
		r.Value = m.Value
	}
	return r
}

// rawIsNull reports whether a raw JSON value is null.
func rawIsNull(v []byte) bool {
	for _, c := range v {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case 'n':
			return true
		}
		return false
	}
	return false
}

// apply writes m's value when it wins over the key's current one.
func (w *stateWriter) apply(txn *badger.Txn, m *slipstream.Message) error {
	if !isStateWrite(m.Type) {
		return nil
	}
	if !forSelf(w.tags, m) {
		w.writes.WithLabelValues("not_targeted").Inc()
		return nil
	}
	rec := stateRecord(m)
	cur, err := store.ReadState(txn, m.Key)
	if err != nil {
		return err
	}
	if !rec.Newer(cur) {
		w.writes.WithLabelValues("stale").Inc()
		return nil
	}
	b, _ := rec.MarshalBinary()
	entry := badger.NewEntry(store.StateKey(m.Key), b)
	if rec.Deleted {
		entry = entry.WithTTL(w.ttl)
	}
	if err := txn.SetEntry(entry); err != nil {
		return fmt.Errorf("state key %q: %w", m.Key, err)
	}
	w.writes.WithLabelValues("applied").Inc()
	return nil
}

// State is the state stage: it answers gets.
type State struct {
	db      *badger.DB
	self    string
	cluster string
	tags    []string
	now     func() time.Time
	reads   *prometheus.CounterVec
}

var _ pipeline.Stage = (*State)(nil)

// Process implements pipeline.Stage. The reads of a batch share one
// read-only transaction, which sees every write persist committed before.
func (s *State) Process(_ context.Context, batch []*pipeline.Envelope) ([]*pipeline.Envelope, error) {
	var txn *badger.Txn
	defer func() {
		if txn != nil {
			txn.Discard()
		}
	}()
	for _, e := range batch {
		if !isRequest(e) || !forSelf(s.tags, e.Msg) || e.From == nil {
			continue
		}
		if txn == nil {
			txn = s.db.NewTransaction(false)
		}
		rec, err := store.ReadState(txn, e.Msg.Key)
		if err != nil {
			return nil, err
		}
		e.From.Reply(s.answer(e, rec))
	}
	return batch, nil
}

// answer builds the reply to get request e from the key's record (nil when
// the key is unknown).
func (s *State) answer(e *pipeline.Envelope, rec *store.StateRecord) *slipstream.Message {
	m := e.Msg
	r := NewReply(m, s.self, s.cluster, s.now())
	r.Key = m.Key
	found, outcome := false, "missing"
	if rec != nil && !rec.Deleted {
		switch want := slipstream.Type(wantType(m.Type)); {
		case want == "" || string(want) == rec.Type:
			found, outcome, r.Value = true, "found", rec.Value
		default:
			outcome = "mismatch"
			r.Error = fmt.Sprintf("key %s was set by %s, not %s; read it with %s", quote(m.Key), rec.Type, want,
				getFor(slipstream.Type(rec.Type)))
		}
	}
	r.Found = &found
	injectTrace(e.Context(), r)
	s.reads.WithLabelValues(string(m.Type), outcome).Inc()
	return r
}

// wantType is the set type a get reads: GA reads SA, GW reads SW; GK reads
// any key ("" = any).
func wantType(t slipstream.Type) string {
	switch t {
	case slipstream.TypeGA:
		return string(slipstream.TypeSA)
	case slipstream.TypeGW:
		return string(slipstream.TypeSW)
	}
	return ""
}

// getFor is the get that reads a key set by t.
func getFor(t slipstream.Type) slipstream.Type {
	switch t {
	case slipstream.TypeSA:
		return slipstream.TypeGA
	case slipstream.TypeSW:
		return slipstream.TypeGW
	}
	return slipstream.TypeGK
}

// NewReply builds the reply envelope of request m answered by instance self
// (PROTOCOL.md "Requests and replies"): same type, a new messageId,
// inReplyTo = m's id, and the answering instance as origin.
func NewReply(m *slipstream.Message, self, cluster string, now time.Time) *slipstream.Message {
	return &slipstream.Message{
		Type:             m.Type,
		MessageID:        slipstream.NewMessageID(),
		InReplyTo:        m.MessageID,
		OriginInstanceID: self,
		SourceInstanceID: self,
		MessagePath:      []string{self},
		ClusterGroupID:   cluster,
		Timestamp:        now.UnixMilli(),
	}
}
