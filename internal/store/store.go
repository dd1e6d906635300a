// Package store is Slipstream's durable state, in Badger.
//
// Key layout (every key starts with a one-byte family and a slash):
//
//	x/<cluster>\x00<messageId>      dedup marker, with TTL = the dedup window
//	o/<link>\x00<seq:8 bytes BE>    outbox entry: the encoded message for one recipient
//	q/<link>\x00<seq:8 bytes BE>    dead letter: JSON DeadLetter
//	l/<link>                        a known link: JSON LinkRecord
//	s/<key>                         state value (the state stage)
//
// Outbox entries carry the whole encoded message, one copy per recipient, so
// an ACK removes exactly one key and no reference counting is needed; a
// message is "completed" (gone from the store) when its last entry is
// acknowledged. Link ids and cluster ids never contain NUL (validated by the
// protocol package), which makes the separator unambiguous.
//
// # Retention
//
// Nothing in the store grows without bound under a steady load:
//
//   - Completed deliveries: the websocket sink deletes an outbox entry when
//     its link acknowledges it (or, for links without ACKs, once sent); the
//     message is gone with its last entry.
//   - Dedup markers carry a Badger TTL equal to the dedup window: they stop
//     being visible when it lapses, and compaction drops them from disk.
//   - Outboxes of links that stay away are bounded by the websocket sink's
//     max_pending and max_age: the oldest entries beyond them move to the
//     dead-letter store (see package sinks).
//   - Dead letters stay until an operator replays or purges them (the admin
//     API, `slipstream dlq`).
//   - Badger's value log is garbage-collected on a schedule by
//     StartMaintenance; the LSM tree drops deleted and expired keys as it
//     compacts.
//
// The store's size is exported as slipstream_store_bytes (RegisterMetrics).
//
// Known issue (Badger v4.9.6, the latest release): value-log GC can bring
// back a key deleted before the rewrite ran, when the key's old version was
// still in the LSM tree. The rewrite looks the key up at the version of the
// value it moves, which the newer tombstone does not hide, and writes it
// back under that version; compaction may later drop the tombstone at the
// last level while the copy sits above it (badger#2286, only partly fixed by
// badger#2310, which protects tombstones written during the rewrite).
// TestBadgerGCResurrectsDeletedKeys reproduces it. Only values in the value
// log (over DefaultValueThreshold) are affected. For outbox entries the
// websocket sink copes: each writer re-reads its outbox from the start every
// 30 seconds; an entry that came back is deleted again if the writer
// completed it in its current session (it remembers the last 256), else
// sent again (receivers deduplicate it). A purged dead letter over the threshold may also come back: purge
// again. A state value over the threshold that was then deleted (SK null)
// could in principle come back too: its tombstone is a newer record that
// expires after tombstone_ttl, and if a rewrite copied the old value while
// both were in the LSM tree and the copy has not met the tombstone in a
// compaction by the time the expired tombstone is dropped, the old value is
// visible again. With the default 30-day tombstone_ttl that needs a store
// that compacts nothing for weeks; it has not been observed.
package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/prometheus/client_golang/prometheus"
)

// Key families.
const (
	famDedup  = 'x'
	famOutbox = 'o'
	famDLQ    = 'q'
	famLink   = 'l'
	famState  = 's'
)

// ErrClosed is returned by operations on a closed store.
var ErrClosed = errors.New("store: closed")

// Options tune Badger. The zero value gives Slipstream's defaults (see
// Open): synced writes, small memtables, tables and caches, so that Badger's
// memory stays small and bounded whatever the backlog (BENCHMARKS.md (c)).
type Options struct {
	// InMemory keeps nothing on disk (tests of logic that is not about
	// durability only).
	InMemory bool
	// MemTableSize in bytes; default DefaultMemTableSize. It also bounds a
	// transaction, hence one message's outbox entries (see
	// DefaultMemTableSize).
	MemTableSize int64
	// BlockCacheSize in bytes; default 8 MiB.
	BlockCacheSize int64
	// ValueLogFileSize in bytes; default 64 MiB (tests of value-log GC use
	// small files).
	ValueLogFileSize int64
	// ValueThreshold is the size from which a value goes to Badger's value
	// log instead of the LSM tree; default DefaultValueThreshold.
	ValueThreshold int64
	// Logger receives Badger's warnings and errors, and the store's own
	// (value-log GC).
	Logger *slog.Logger
}

// DefaultValueThreshold is the size from which a value (a message, in an
// outbox entry or a dead letter) goes to Badger's value log rather than into
// the LSM tree. Small enough that a transaction (at most 15% of a memtable:
// 1.2 MiB) holds one big message for thousands of recipients: a value-log
// entry costs a transaction only its key and a 12-byte pointer.
const DefaultValueThreshold = 4 << 10

// DefaultMemTableSize is the size of Badger's memtables. Badger keeps up to
// three (one being written, two being flushed), and the buffers that flush
// them grow to hold a whole table, so it sets most of the store's memory
// (16 MiB before; smaller ones save memory but cost CPU in flushes and
// compactions, BENCHMARKS.md (c)). It also
// bounds a transaction to 15% of it (1.2 MiB), and persist writes a
// message with all its outbox entries in one transaction: a message below
// DefaultValueThreshold can have about 1.1 MiB / (its size + ~50 bytes)
// recipients (some 3 000 for 300 bytes, 350 for 3 KiB), and persist refuses
// a larger one (ERR too_large); it splits batches of messages across
// transactions, never a message. instance.memtable_size overrides it.
const DefaultMemTableSize = 8 << 20

// Store is the Badger database of one instance. It is safe for concurrent use.
type Store struct {
	db       *badger.DB
	dir      string
	inMemory bool
	log      *slog.Logger
	gcRuns   *prometheus.CounterVec

	mu        sync.Mutex
	closed    bool
	maintStop context.CancelFunc // nil until StartMaintenance
	maint     sync.WaitGroup     // the maintenance goroutine
}

// Open opens (creating if needed) the store in dir.
func Open(dir string, o Options) (*Store, error) {
	bo := badger.DefaultOptions(dir)
	if o.InMemory {
		bo = badger.DefaultOptions("").WithInMemory(true)
	}
	mem := o.MemTableSize
	if mem == 0 {
		mem = DefaultMemTableSize
	}
	cache := o.BlockCacheSize
	if cache == 0 {
		cache = 8 << 20
	}
	threshold := o.ValueThreshold
	if threshold == 0 {
		threshold = DefaultValueThreshold
	}
	vlogFile := o.ValueLogFileSize
	if vlogFile == 0 {
		vlogFile = 64 << 20
	}
	// Memory (BENCHMARKS.md (c) and (e)): Badger builds every table it
	// writes (memtable flushes, compactions) in a buffer from a pool that
	// keeps up to 8 of them, each grown to the largest table it built (a
	// flushed memtable, or a table of a deep level: the default doubles
	// the table size at every level), and a compaction builds up to a
	// dozen tables at a time. A builder ends a table when its size reaches
	// the level's table size, but with compression it counts the compressed
	// size, known only once goroutines compressed the blocks: when they lag
	// (a busy CPU) a builder keeps taking entries, and its buffer grew to 60
	// MiB (a 600 000-message backlog: 420 MiB of 446 MiB live heap).
	// Without compression the size is exact and a table is built once (no
	// compressed copy), its blocks are read in place from the mapped file;
	// the LSM tree holds small values only, so the disk space compression
	// saves is modest. Tables of one size at every level
	// (TableSizeMultiplier 1) keep compaction buffers at 2 x BaseTableSize
	// whatever the depth of the tree. The index cache only serves encrypted
	// tables: none.
	bo = bo.
		WithSyncWrites(!o.InMemory).
		WithMemTableSize(mem).
		WithNumMemtables(3).
		WithNumLevelZeroTables(3).
		WithNumLevelZeroTablesStall(8).
		WithBaseTableSize(2 << 20).
		WithCompression(options.None).
		WithBlockCacheSize(cache).
		WithIndexCacheSize(0).
		WithValueLogFileSize(vlogFile).
		WithValueThreshold(threshold).
		WithNumCompactors(2).
		WithCompactL0OnClose(false).
		WithLogger(badgerLogger{log: o.Logger})
	bo.TableSizeMultiplier = 1 // no With method
	db, err := badger.Open(bo)
	if err != nil {
		return nil, fmt.Errorf("open store in %q: %w (is another instance using this data_dir?)", dir, err)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{db: db, dir: dir, inMemory: o.InMemory, log: log, gcRuns: newGCRuns()}, nil
}

// DB exposes Badger for the parts of Slipstream that build their own
// transactions (persist's group commit, the outbox writers).
func (s *Store) DB() *badger.DB { return s.db }

// Dir is the data directory.
func (s *Store) Dir() string { return s.dir }

// Close stops the maintenance goroutine (waiting for it), then flushes and
// closes Badger. It is safe to call more than once.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	stop := s.maintStop
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
	s.maint.Wait()
	if s.db == nil || s.db.IsClosed() {
		return nil
	}
	return s.db.Close()
}

// Writable checks that a synced write succeeds (for /readyz).
func (s *Store) Writable() error {
	if s.db.IsClosed() {
		return ErrClosed
	}
	return s.db.Update(func(txn *badger.Txn) error {
		return txn.SetEntry(badger.NewEntry([]byte("h/ready"), []byte(time.Now().UTC().Format(time.RFC3339Nano))))
	})
}

// DedupKey is the key of the dedup marker of (cluster, id).
func DedupKey(cluster, id string) []byte {
	k := make([]byte, 0, 3+len(cluster)+len(id))
	k = append(k, famDedup, '/')
	k = append(k, cluster...)
	k = append(k, 0)
	return append(k, id...)
}

// LinkPrefix is the prefix of all keys of family fam for one link.
func linkPrefix(fam byte, link string) []byte {
	k := make([]byte, 0, 3+len(link)+8)
	k = append(k, fam, '/')
	k = append(k, link...)
	return append(k, 0)
}

// OutboxPrefix is the prefix of a link's outbox entries.
func OutboxPrefix(link string) []byte { return linkPrefix(famOutbox, link) }

// OutboxKey is the key of a link's outbox entry seq.
func OutboxKey(link string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(OutboxPrefix(link), seq)
}

// DLQPrefix is the prefix of a link's dead letters; DLQPrefix("") minus its
// NUL is the prefix of all dead letters (see AllDLQPrefix).
func DLQPrefix(link string) []byte { return linkPrefix(famDLQ, link) }

// AllDLQPrefix is the prefix of every dead letter.
func AllDLQPrefix() []byte { return []byte{famDLQ, '/'} }

// DLQKey is the key of a link's dead letter seq.
func DLQKey(link string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(DLQPrefix(link), seq)
}

// LinkKey is the key of a known link's record.
func LinkKey(link string) []byte { return append([]byte{famLink, '/'}, link...) }

// AllLinksPrefix is the prefix of every known link record.
func AllLinksPrefix() []byte { return []byte{famLink, '/'} }

// StateKey is the key of a state value.
func StateKey(key string) []byte { return append([]byte{famState, '/'}, key...) }

// SplitSeqKey splits an o/ or q/ key into link id and seq.
func SplitSeqKey(k []byte) (link string, seq uint64, ok bool) {
	if len(k) < 2+1+8 || k[1] != '/' {
		return "", 0, false
	}
	body := k[2 : len(k)-8]
	if len(body) == 0 || body[len(body)-1] != 0 {
		return "", 0, false
	}
	return string(body[:len(body)-1]), binary.BigEndian.Uint64(k[len(k)-8:]), true
}

// LastSeq returns the highest seq under a link's prefix of family fam ('o'
// or 'q'), or 0 when there is none.
func (s *Store) lastSeq(prefix []byte) (uint64, error) {
	var last uint64
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Reverse = true
		opts.PrefetchValues = false
		opts.Prefix = prefix
		it := txn.NewIterator(opts)
		defer it.Close()
		seek := append(append([]byte{}, prefix...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
		it.Seek(seek)
		if it.Valid() {
			if _, seq, ok := SplitSeqKey(it.Item().Key()); ok {
				last = seq
			}
		}
		return nil
	})
	return last, err
}

// LastOutboxSeq returns the highest outbox or dead-letter seq of a link, so
// that a restarted instance continues numbering after both.
func (s *Store) LastOutboxSeq(link string) (uint64, error) {
	a, err := s.lastSeq(OutboxPrefix(link))
	if err != nil {
		return 0, err
	}
	b, err := s.lastSeq(DLQPrefix(link))
	if err != nil {
		return 0, err
	}
	return max(a, b), nil
}

// OutboxEntry is one pending delivery read back from disk.
type OutboxEntry struct {
	Seq   uint64
	Frame []byte
}

// ReadOutbox returns up to limit entries of a link's outbox with seq >= from,
// in order.
func (s *Store) ReadOutbox(link string, from uint64, limit int) ([]OutboxEntry, error) {
	var out []OutboxEntry
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = OutboxPrefix(link)
		opts.PrefetchSize = min(limit, 100)
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Seek(OutboxKey(link, from)); it.Valid() && len(out) < limit; it.Next() {
			_, seq, ok := SplitSeqKey(it.Item().Key())
			if !ok {
				continue
			}
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			out = append(out, OutboxEntry{Seq: seq, Frame: v})
		}
		return nil
	})
	return out, err
}

// CountOutbox counts a link's pending entries (for status and metrics; it
// iterates keys only).
func (s *Store) CountOutbox(link string) (int, error) {
	n := 0
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = OutboxPrefix(link)
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	return n, err
}

// CountOutboxAt counts a link's outbox entries in one read snapshot (keys
// only); it then calls late with the highest seq it saw (0: none) and
// reports how many of the seqs late returns exist in that same snapshot. An
// outbox writer recounts with it while entries keep arriving: the seqs
// notified while the count ran are counted once, by the scan when they were
// committed before its snapshot, else by the writer.
func (s *Store) CountOutboxAt(link string, late func(last uint64) []uint64) (n, lateFound int, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = OutboxPrefix(link)
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		var last uint64
		for it.Rewind(); it.Valid(); it.Next() {
			n++
			if _, seq, ok := SplitSeqKey(it.Item().Key()); ok {
				last = max(last, seq)
			}
		}
		it.Close()
		for _, seq := range late(last) {
			_, err := txn.Get(OutboxKey(link, seq))
			switch {
			case err == nil:
				lateFound++
			case !errors.Is(err, badger.ErrKeyNotFound):
				return err
			}
		}
		return nil
	})
	return n, lateFound, err
}

// DeleteOutbox removes acknowledged entries of a link in one write.
func (s *Store) DeleteOutbox(link string, seqs []uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, seq := range seqs {
		if err := wb.Delete(OutboxKey(link, seq)); err != nil {
			return err
		}
	}
	return wb.Flush()
}

// DropOutbox removes every outbox entry of a link (an ephemeral link that is
// gone for good) and returns how many there were. It deletes key by key
// rather than with Badger's DropPrefix, which would stall every other writer.
func (s *Store) DropOutbox(link string) (int, error) {
	var keys [][]byte
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = OutboxPrefix(link)
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		return nil
	})
	if err != nil || len(keys) == 0 {
		return 0, err
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			return 0, err
		}
	}
	return len(keys), wb.Flush()
}

type badgerLogger struct{ log *slog.Logger }

func (l badgerLogger) Errorf(f string, a ...any) {
	if l.log != nil {
		l.log.Error("badger: " + fmt.Sprintf(f, a...))
	}
}
func (l badgerLogger) Warningf(f string, a ...any) {
	if l.log != nil {
		l.log.Warn("badger: " + fmt.Sprintf(f, a...))
	}
}
func (l badgerLogger) Infof(string, ...any)  {}
func (l badgerLogger) Debugf(string, ...any) {}
