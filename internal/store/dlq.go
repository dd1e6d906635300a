package store

import (
	"encoding/json"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// DeadLetter is a delivery that could not be completed: kept with why, and how
// many times it was tried, until it is replayed or purged.
type DeadLetter struct {
	Link     string          `json:"link"`
	Seq      uint64          `json:"seq"`
	Reason   string          `json:"reason"`
	Attempts int             `json:"attempts"`
	At       time.Time       `json:"at"`
	Message  json.RawMessage `json:"message"`
}

// MoveToDLQ atomically removes outbox entry (link, seq) and stores it as a
// dead letter with its reason. frame is the entry's message.
func (s *Store) MoveToDLQ(link string, seq uint64, frame []byte, reason string, attempts int) error {
	rec, err := json.Marshal(DeadLetter{Link: link, Seq: seq, Reason: reason, Attempts: attempts, At: time.Now().UTC(), Message: frame})
	if err != nil {
		return err
	}
	return s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Delete(OutboxKey(link, seq)); err != nil {
			return err
		}
		return txn.Set(DLQKey(link, seq), rec)
	})
}

// ListDLQ returns up to limit dead letters (all links when link is ""), in
// key order.
func (s *Store) ListDLQ(link string, limit int) ([]DeadLetter, error) {
	prefix := AllDLQPrefix()
	if link != "" {
		prefix = DLQPrefix(link)
	}
	var out []DeadLetter
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = prefix
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid() && (limit <= 0 || len(out) < limit); it.Next() {
			var d DeadLetter
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &d) }); err != nil {
				return err
			}
			out = append(out, d)
		}
		return nil
	})
	return out, err
}

// DeleteDLQ removes the given dead letters.
func (s *Store) DeleteDLQ(items []DeadLetter) error {
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, d := range items {
		if err := wb.Delete(DLQKey(d.Link, d.Seq)); err != nil {
			return err
		}
	}
	return wb.Flush()
}

// RequeueDLQ moves dead letter d back into its link's outbox under newSeq,
// in one write.
func (s *Store) RequeueDLQ(d DeadLetter, newSeq uint64) error {
	return s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Delete(DLQKey(d.Link, d.Seq)); err != nil {
			return err
		}
		return txn.Set(OutboxKey(d.Link, newSeq), d.Message)
	})
}
