// Package badgerdedup is a client.DedupStore on disk, in a Badger database,
// for a receiver that runs as one process and must not handle a message
// twice across its own restarts: a message it marked done before a crash or
// a redeploy is still Handled when the instance redelivers it (its ACK was
// lost with the process). Receivers in several processes cannot share it
// (Badger locks its directory); use client/redisdedup for them.
//
// Open opens a database of the store's own in a directory, sized to be
// embedded in an application: 4 MiB memtables, no block cache, no
// compression, Badger's logging reduced to its warnings and errors (sent to
// log/slog's default logger). New uses an application's own database instead, with the
// store's keys under KeyPrefix.
//
// Each message is one key holding its state ("pending" for an owner, or
// "done") and its expiry in Unix nanoseconds, which Claim compares with the
// wall clock: leases and windows have the clock's precision (a clock
// stepped forward ends them early, one stepped back late), and last across
// restarts (a lease taken before a crash blocks other owners until
// it expires, then the message is claimable). The key also carries a Badger
// TTL rounded up to the next second, so that compactions drop the expired
// keys: the disk holds about one key per message handled within the window,
// plus what compactions have not reclaimed yet. There is no goroutine of
// the store's own.
//
// Done is durable when it returns: the write is synced to disk (by Badger
// when the database has SyncWrites, by an explicit DB.Sync otherwise). Claim
// and Release are not synced: after a machine crash a claim may be lost,
// which is harmless (its owner died with the machine) and a release may be
// lost, which delays the message until the lease expires. Claim is an
// optimistic Badger transaction, retried when a concurrent call wrote the
// same key. Errors are Badger's (a closed database, a full disk), and the
// caller decides (Claim's result with an error is Busy): neither handling
// nor acknowledging the message is the safe answer, since the instance
// delivers it again.
package badgerdedup

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"

	"github.com/slipstream-sync/slipstream/client"
)

// KeyPrefix is the prefix of the store's keys in the database: an
// application that gives New its own database keeps its keys out of it.
const KeyPrefix = "slipstream/receiver-dedup/"

// Value: one state byte, the expiry (big-endian Unix nanoseconds), then the
// owner of a pending claim.
const (
	statePending byte = 'p'
	stateDone    byte = 'd'
	headerLen         = 1 + 8
)

// Store is a client.DedupStore in a Badger database. It is safe for
// concurrent use.
type Store struct {
	db    *badger.DB
	owned bool // opened by Open: Close closes it
	sync  bool // Done syncs explicitly (the database does not sync its writes)

	closeOnce sync.Once
	closeErr  error
}

var _ client.DedupStore = (*Store)(nil)

// Open opens (creating it if needed) the store's own database in dir. Only
// one process may have it open at a time.
func Open(dir string) (*Store, error) {
	opts := badger.DefaultOptions(dir).
		WithLogger(quietLogger{}).
		WithSyncWrites(false). // Done syncs: claims need not
		WithCompression(options.None).
		WithBlockCacheSize(0).
		WithIndexCacheSize(0).
		WithMemTableSize(4 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(4).
		WithBaseTableSize(1 << 20).
		WithValueLogFileSize(8 << 20).
		WithValueThreshold(1 << 10).
		WithNumCompactors(2).
		WithMetricsEnabled(false)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("badgerdedup: open %q: %w (is another process using it?)", dir, err)
	}
	s := New(db)
	s.owned = true
	return s, nil
}

// New returns a store in an application's database db, with its keys under
// KeyPrefix. The application keeps db open while it uses the store, and
// closes it; the store's Close does not.
func New(db *badger.DB) *Store {
	return &Store{db: db, sync: !db.Opts().SyncWrites && !db.Opts().InMemory}
}

// Close closes the database if Open opened it; for a store made by New it
// does nothing. It is safe to call more than once. The store's methods
// return an error after it.
func (s *Store) Close() error {
	if !s.owned {
		return nil
	}
	s.closeOnce.Do(func() { s.closeErr = s.db.Close() })
	return s.closeErr
}

func dbKey(key string) []byte {
	return append([]byte(KeyPrefix), key...)
}

func encode(state byte, expires time.Time, owner string) []byte {
	v := make([]byte, headerLen, headerLen+len(owner))
	v[0] = state
	binary.BigEndian.PutUint64(v[1:], uint64(expires.UnixNano()))
	return append(v, owner...)
}

// entry is the write of key with Badger's TTL at the second after expires:
// Badger hides the key only after the store's own expiry.
func entry(key []byte, state byte, expires time.Time, owner string) *badger.Entry {
	e := badger.NewEntry(key, encode(state, expires, owner))
	e.ExpiresAt = uint64(expires.Unix()) + 1
	return e
}

type record struct {
	state   byte
	expires int64 // Unix nanoseconds
	owner   string
}

// get reads key's record; ok is false when it is absent.
func get(txn *badger.Txn, key []byte) (r record, ok bool, err error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return r, false, nil
	}
	if err != nil {
		return r, false, err
	}
	err = item.Value(func(v []byte) error {
		if len(v) < headerLen || (v[0] != statePending && v[0] != stateDone) {
			return fmt.Errorf("key %q holds a value that is not the store's", key)
		}
		r = record{state: v[0], expires: int64(binary.BigEndian.Uint64(v[1:])), owner: string(v[headerLen:])}
		return nil
	})
	return r, err == nil, err
}

// update runs fn in a read-write transaction until it commits without a
// conflict (another call wrote a key fn read) or ctx ends.
func (s *Store) update(ctx context.Context, fn func(txn *badger.Txn) error) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := s.db.Update(fn)
		if !errors.Is(err, badger.ErrConflict) {
			return err
		}
	}
}

// Claim implements client.DedupStore.
func (s *Store) Claim(ctx context.Context, key, owner string, lease time.Duration) (client.ClaimResult, error) {
	if lease <= 0 {
		return client.Busy, fmt.Errorf("badgerdedup: claim %q: lease %v is not positive", key, lease)
	}
	k := dbKey(key)
	var res client.ClaimResult
	err := s.update(ctx, func(txn *badger.Txn) error {
		now := time.Now()
		r, ok, err := get(txn, k)
		if err != nil {
			return err
		}
		if ok && now.UnixNano() < r.expires {
			switch {
			case r.state == stateDone:
				res = client.Handled
				return nil
			case r.owner != owner:
				res = client.Busy
				return nil
			}
		}
		res = client.Claimed // absent, expired, or owner's own claim: (re)set the lease
		return txn.SetEntry(entry(k, statePending, now.Add(lease), owner))
	})
	if err != nil {
		return client.Busy, fmt.Errorf("badgerdedup: claim %q: %w", key, err)
	}
	return res, nil
}

// Done implements client.DedupStore. The mark is on disk when it returns.
func (s *Store) Done(ctx context.Context, key, owner string, window time.Duration) error {
	if window <= 0 {
		return fmt.Errorf("badgerdedup: done %q: window %v is not positive", key, window)
	}
	k := dbKey(key)
	err := s.update(ctx, func(txn *badger.Txn) error {
		return txn.SetEntry(entry(k, stateDone, time.Now().Add(window), ""))
	})
	if err == nil && s.sync {
		err = s.db.Sync()
	}
	if err != nil {
		return fmt.Errorf("badgerdedup: done %q: %w", key, err)
	}
	return nil
}

// Release implements client.DedupStore.
func (s *Store) Release(ctx context.Context, key, owner string) error {
	k := dbKey(key)
	err := s.update(ctx, func(txn *badger.Txn) error {
		r, ok, err := get(txn, k)
		if err != nil || !ok || r.state != statePending || r.owner != owner {
			return err
		}
		return txn.Delete(k)
	})
	if err != nil {
		return fmt.Errorf("badgerdedup: release %q: %w", key, err)
	}
	return nil
}

// quietLogger sends Badger's errors and warnings to slog's default logger
// and drops the rest (Badger is chatty at info level: every open, flush and
// compaction).
type quietLogger struct{}

func (quietLogger) Errorf(format string, v ...any) {
	slog.Error(strings.TrimSpace(fmt.Sprintf(format, v...)), "part", "badgerdedup")
}

func (quietLogger) Warningf(format string, v ...any) {
	slog.Warn(strings.TrimSpace(fmt.Sprintf(format, v...)), "part", "badgerdedup")
}

func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Debugf(string, ...any) {}
