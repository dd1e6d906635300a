package store

import (
	"encoding/json"

	badger "github.com/dgraph-io/badger/v4"
)

// LinkRecord is a known link, kept so that a durable link stays a recipient
// (its outbox keeps filling) while it is offline and across restarts.
type LinkRecord struct {
	ID   string   `json:"id"`
	Tags []string `json:"tags"`
	Peer bool     `json:"peer"`
	Acks bool     `json:"acks"`
}

// SaveLink writes (or overwrites) a known link.
func (s *Store) SaveLink(r LinkRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return s.db.Update(func(txn *badger.Txn) error { return txn.Set(LinkKey(r.ID), b) })
}

// DeleteLink forgets a known link (its outbox is not touched).
func (s *Store) DeleteLink(id string) error {
	return s.db.Update(func(txn *badger.Txn) error { return txn.Delete(LinkKey(id)) })
}

// Links returns every known link.
func (s *Store) Links() ([]LinkRecord, error) {
	var out []LinkRecord
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = AllLinksPrefix()
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var r LinkRecord
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &r) }); err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}
