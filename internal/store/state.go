package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	badger "github.com/dgraph-io/badger/v4"
)

// This file holds the replicated state (family 's').
//
// A state record is the latest write of one key, chosen by last writer wins
// on (Timestamp, Origin, MessageID). A delete (SK with a null value) leaves a
// tombstone record so that an older write arriving later cannot bring the key
// back; tombstones expire after the state stage's tombstone_ttl.

// StateRecord is the stored value of one key.
type StateRecord struct {
	// Type is the message type that set the key: "SK", "SA" or "SW".
	Type string
	// Timestamp, Origin and MessageID identify the write (last writer wins).
	Timestamp int64
	Origin    string
	MessageID string
	// Deleted marks a tombstone (SK with a null value).
	Deleted bool
	// Value is the JSON value as it arrived (nil for a tombstone).
	Value []byte
}

// Newer reports whether r wins over old by last writer wins: the greater
// (Timestamp, Origin, MessageID), compared in that order (strings
// bytewise). A nil old always loses.
func (r *StateRecord) Newer(old *StateRecord) bool {
	if old == nil {
		return true
	}
	if r.Timestamp != old.Timestamp {
		return r.Timestamp > old.Timestamp
	}
	if c := strings.Compare(r.Origin, old.Origin); c != 0 {
		return c > 0
	}
	return r.MessageID > old.MessageID
}

const stateRecordVersion = 1

// MarshalBinary encodes r: version, flags, then length-prefixed type, origin
// and message id, the timestamp, and the value as the rest.
func (r *StateRecord) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, 2+3*binary.MaxVarintLen64+binary.MaxVarintLen64+len(r.Type)+len(r.Origin)+len(r.MessageID)+len(r.Value))
	var flags byte
	if r.Deleted {
		flags |= 1
	}
	b = append(b, stateRecordVersion, flags)
	b = binary.AppendVarint(b, r.Timestamp)
	for _, s := range [...]string{r.Type, r.Origin, r.MessageID} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return append(b, r.Value...), nil
}

var errBadStateRecord = errors.New("store: malformed state record")

// UnmarshalBinary decodes what MarshalBinary made. Value aliases b.
func (r *StateRecord) UnmarshalBinary(b []byte) error {
	if len(b) < 2 || b[0] != stateRecordVersion {
		return errBadStateRecord
	}
	r.Deleted = b[1]&1 != 0
	b = b[2:]
	ts, n := binary.Varint(b)
	if n <= 0 {
		return errBadStateRecord
	}
	r.Timestamp, b = ts, b[n:]
	var fields [3]string
	for i := range fields {
		l, n := binary.Uvarint(b)
		if n <= 0 || uint64(len(b)-n) < l {
			return errBadStateRecord
		}
		fields[i], b = string(b[n:n+int(l)]), b[n+int(l):]
	}
	r.Type, r.Origin, r.MessageID = fields[0], fields[1], fields[2]
	r.Value = nil
	if len(b) > 0 {
		r.Value = b
	}
	return nil
}

// ReadState returns the record of key in txn, or nil when there is none
// (never set, or its tombstone expired).
func ReadState(txn *badger.Txn, key string) (*StateRecord, error) {
	item, err := txn.Get(StateKey(key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	r := &StateRecord{}
	err = item.Value(func(v []byte) error {
		return r.UnmarshalBinary(append([]byte(nil), v...))
	})
	if err != nil {
		return nil, fmt.Errorf("state key %q: %w", key, err)
	}
	return r, nil
}

// State returns the record of key, or nil when there is none.
func (s *Store) State(key string) (*StateRecord, error) {
	var r *StateRecord
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		r, err = ReadState(txn, key)
		return err
	})
	return r, err
}

// StateEntry is one key's record, as listed by States.
type StateEntry struct {
	Key string
	StateRecord
}

// States lists the records whose key starts with prefix, in key order,
// starting after the key `after` (for paging; "" from the start), at most
// limit of them (0: all). Tombstones are included (Deleted set).
func (s *Store) States(prefix, after string, limit int) ([]StateEntry, error) {
	var out []StateEntry
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = StateKey(prefix)
		it := txn.NewIterator(opts)
		defer it.Close()
		start := StateKey(prefix)
		if after != "" {
			start = append(StateKey(after), 0)
		}
		for it.Seek(start); it.Valid(); it.Next() {
			item := it.Item()
			e := StateEntry{Key: string(item.Key()[2:])}
			err := item.Value(func(v []byte) error {
				return e.UnmarshalBinary(append([]byte(nil), v...))
			})
			if err != nil {
				return fmt.Errorf("state key %q: %w", e.Key, err)
			}
			out = append(out, e)
			if limit > 0 && len(out) == limit {
				return nil
			}
		}
		return nil
	})
	return out, err
}
