package store

import (
	"bytes"
	"encoding/json"
	"errors"
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
	Message  json.RawMessage `json:"message,omitempty"`
	// Raw holds the entry's bytes instead of Message when they are not valid
	// JSON (an outbox entry that could not be decoded), so that nothing is
	// lost and a replay writes back exactly what was there.
	Raw []byte `json:"raw,omitempty"`
}

// Frame is the outbox entry the dead letter came from: Message, or Raw.
func (d *DeadLetter) Frame() []byte {
	if d.Message != nil {
		return d.Message
	}
	return d.Raw
}

// DLQMove is one outbox entry to move to the dead-letter store.
type DLQMove struct {
	Seq      uint64
	Frame    []byte
	Attempts int
}

// DLQLinkStat summarises one link's dead letters.
type DLQLinkStat struct {
	Count   int
	LastSeq uint64
}

func deadLetterRecord(link string, seq uint64, frame []byte, reason string, attempts int, at time.Time) ([]byte, error) {
	d := DeadLetter{Link: link, Seq: seq, Reason: reason, Attempts: attempts, At: at}
	if json.Valid(frame) {
		d.Message = frame
	} else {
		d.Raw = frame
	}
	return json.Marshal(d)
}

// MoveToDLQ atomically removes outbox entry (link, seq) and stores it as a
// dead letter with its reason. frame is the entry's message.
func (s *Store) MoveToDLQ(link string, seq uint64, frame []byte, reason string, attempts int) error {
	rec, err := deadLetterRecord(link, seq, frame, reason, attempts, time.Now().UTC())
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

// Writes that move many entries are split so that each transaction stays
// within Badger's limit (15% of a memtable: 1.2 MiB with the default 8 MiB,
// counting keys and ~12 bytes per entry besides the values): at most
// txnItems entries and txnBytes of values, and at least one.
const (
	txnItems = 1000
	txnBytes = 768 << 10
)

// chunks calls fn for consecutive ranges [i, j) of n items whose sizes
// (size(k)) fit the budget.
func chunks(n int, size func(k int) int, fn func(i, j int) error) error {
	for i := 0; i < n; {
		j, bytes := i, 0
		for j < n && j-i < txnItems && (j == i || bytes+size(j) <= txnBytes) {
			bytes += size(j)
			j++
		}
		if err := fn(i, j); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// MoveManyToDLQ moves outbox entries of link to the dead-letter store, all
// with one reason, a bounded number per write (each entry moves atomically;
// after a failure the entries not yet moved stay in the outbox). It returns
// how many were moved.
func (s *Store) MoveManyToDLQ(link string, moves []DLQMove, reason string) (int, error) {
	at := time.Now().UTC()
	recs := make([][]byte, len(moves))
	for i, m := range moves {
		rec, err := deadLetterRecord(link, m.Seq, m.Frame, reason, m.Attempts, at)
		if err != nil {
			return 0, err
		}
		recs[i] = rec
	}
	done := 0
	err := chunks(len(moves), func(k int) int { return len(recs[k]) }, func(i, j int) error {
		err := s.db.Update(func(txn *badger.Txn) error {
			for k := i; k < j; k++ {
				if err := txn.Delete(OutboxKey(link, moves[k].Seq)); err != nil {
					return err
				}
				if err := txn.Set(DLQKey(link, moves[k].Seq), recs[k]); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			done += j - i
		}
		return err
	})
	return done, err
}

// ListDLQ returns up to limit dead letters (all links when link is ""), in
// key order (by link, then seq). limit <= 0 means no limit.
func (s *Store) ListDLQ(link string, limit int) ([]DeadLetter, error) {
	return s.ListDLQAfter(link, nil, limit)
}

// ListDLQAfter is ListDLQ starting after the dead letter whose key is after
// (DLQKey of the last one of the previous page; nil: from the start).
func (s *Store) ListDLQAfter(link string, after []byte, limit int) ([]DeadLetter, error) {
	prefix := AllDLQPrefix()
	if link != "" {
		prefix = DLQPrefix(link)
	}
	var out []DeadLetter
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = prefix
		if limit > 0 {
			opts.PrefetchSize = min(limit, 100)
		}
		it := txn.NewIterator(opts)
		defer it.Close()
		if after == nil {
			it.Rewind()
		} else {
			it.Seek(after)
			if it.Valid() && bytes.Equal(it.Item().Key(), after) {
				it.Next()
			}
		}
		for ; it.Valid() && (limit <= 0 || len(out) < limit); it.Next() {
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

// GetDLQ returns the dead letters (link, seq) for seqs, in the order given,
// and the seqs that have none.
func (s *Store) GetDLQ(link string, seqs []uint64) (found []DeadLetter, missing []uint64, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		for _, seq := range seqs {
			item, err := txn.Get(DLQKey(link, seq))
			if errors.Is(err, badger.ErrKeyNotFound) {
				missing = append(missing, seq)
				continue
			}
			if err != nil {
				return err
			}
			var d DeadLetter
			if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &d) }); err != nil {
				return err
			}
			found = append(found, d)
		}
		return nil
	})
	return found, missing, err
}

// DLQStats counts the dead letters of each link (of link only, when it is
// not ""), reading keys only.
func (s *Store) DLQStats(link string) (map[string]DLQLinkStat, error) {
	prefix := AllDLQPrefix()
	if link != "" {
		prefix = DLQPrefix(link)
	}
	out := map[string]DLQLinkStat{}
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = prefix
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			id, seq, ok := SplitSeqKey(it.Item().Key())
			if !ok {
				continue
			}
			st := out[id]
			st.Count++
			st.LastSeq = max(st.LastSeq, seq)
			out[id] = st
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

// PurgeDLQ deletes dead letters and returns how many it deleted: those of
// link with the given seqs (seqs that have none are skipped), or, with no
// seqs, every dead letter of link (of every link when link is ""). Dead
// letters added while an unfiltered purge runs may or may not be deleted.
func (s *Store) PurgeDLQ(link string, seqs []uint64) (int, error) {
	if len(seqs) > 0 {
		total := 0
		err := chunks(len(seqs), func(int) int { return 0 }, func(i, j int) error {
			n := 0
			err := s.db.Update(func(txn *badger.Txn) error {
				n = 0
				for _, seq := range seqs[i:j] {
					k := DLQKey(link, seq)
					if _, err := txn.Get(k); errors.Is(err, badger.ErrKeyNotFound) {
						continue
					} else if err != nil {
						return err
					}
					if err := txn.Delete(k); err != nil {
						return err
					}
					n++
				}
				return nil
			})
			if err == nil {
				total += n
			}
			return err
		})
		return total, err
	}
	prefix := AllDLQPrefix()
	if link != "" {
		prefix = DLQPrefix(link)
	}
	const chunk = 10000
	total := 0
	var after []byte
	for {
		var keys [][]byte
		err := s.db.View(func(txn *badger.Txn) error {
			opts := badger.DefaultIteratorOptions
			opts.Prefix = prefix
			opts.PrefetchValues = false
			it := txn.NewIterator(opts)
			defer it.Close()
			if after == nil {
				it.Rewind()
			} else {
				it.Seek(after)
				if it.Valid() && bytes.Equal(it.Item().Key(), after) {
					it.Next()
				}
			}
			for ; it.Valid() && len(keys) < chunk; it.Next() {
				keys = append(keys, it.Item().KeyCopy(nil))
			}
			return nil
		})
		if err != nil || len(keys) == 0 {
			return total, err
		}
		if err := s.deleteKeys(keys); err != nil {
			return total, err
		}
		total += len(keys)
		if len(keys) < chunk {
			return total, nil
		}
		after = keys[len(keys)-1]
	}
}

// RequeueDLQ moves dead letter d back into its link's outbox under newSeq,
// in one write.
func (s *Store) RequeueDLQ(d DeadLetter, newSeq uint64) error {
	return s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Delete(DLQKey(d.Link, d.Seq)); err != nil {
			return err
		}
		return txn.Set(OutboxKey(d.Link, newSeq), d.Frame())
	})
}

// RequeueDLQBatch moves each dead letter items[i] back into its link's
// outbox under seqs[i], a bounded number per write. A dead letter that is not
// stored any more (replayed or purged meanwhile) is skipped: ok reports, per
// item, whether it was requeued. Two batches racing for one dead letter
// cannot both requeue it (the loser fails with badger.ErrConflict).
func (s *Store) RequeueDLQBatch(items []DeadLetter, seqs []uint64) (ok []bool, err error) {
	if len(items) != len(seqs) {
		return nil, errors.New("store: RequeueDLQBatch: items and seqs differ in length")
	}
	ok = make([]bool, len(items))
	err = chunks(len(items), func(k int) int { return len(items[k].Frame()) }, func(i, j int) error {
		err := s.db.Update(func(txn *badger.Txn) error {
			for k := i; k < j; k++ {
				ok[k] = false
				d := &items[k]
				key := DLQKey(d.Link, d.Seq)
				if _, err := txn.Get(key); errors.Is(err, badger.ErrKeyNotFound) {
					continue
				} else if err != nil {
					return err
				}
				if err := txn.Delete(key); err != nil {
					return err
				}
				if err := txn.Set(OutboxKey(d.Link, seqs[k]), d.Frame()); err != nil {
					return err
				}
				ok[k] = true
			}
			return nil
		})
		if err != nil {
			clear(ok[i:j]) // this chunk was not written; earlier ones were
		}
		return err
	})
	return ok, err
}

// deleteKeys deletes keys in one write batch.
func (s *Store) deleteKeys(keys [][]byte) error {
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			return err
		}
	}
	return wb.Flush()
}
