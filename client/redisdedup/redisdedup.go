// Package redisdedup is a client.DedupStore in Redis, for receivers in
// several processes (or on several machines) that share the work of one
// subscription: when a cluster group's redundant instances deliver a
// message to two receivers, or a receiver's redelivery reaches another, the
// store lets exactly one of them handle it.
//
// Each message is one Redis string, prefix + client.DedupKey(...), holding
// "pending:<owner>" while a receiver handles it and "done" after, with
// Redis's own expiry (PX, millisecond precision) as the lease or the
// window: the store needs no cleanup and holds one key per message handled
// within the window. Claim and Release are small Lua scripts, so each is
// one atomic round trip; a retried Claim (after a lost reply) is harmless,
// since a claim is re-entrant for its owner.
//
// Redis is the store's single point of truth: while it is unreachable every
// call returns an error (Claim never answers Claimed without Redis's word;
// its result with an error is Busy), and the caller decides: neither
// handling nor acknowledging the message is the safe answer, since the
// instance delivers it again. Dedup is as durable as the
// Redis: a Redis restarted without persistence forgets the messages handled,
// and their redeliveries are handled again. The store works with a single
// Redis, a Sentinel set-up or a Redis Cluster (every script touches one
// key).
package redisdedup

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/slipstream-sync/slipstream/client"
)

// DefaultPrefix is the prefix of the store's keys when New is given "". It
// is distinct from the prefix of the daemon's own cluster-group dedup keys
// ("slipstream:dedup:"), so receivers may share the daemon's Redis.
const DefaultPrefix = "slipstream:receiver-dedup:"

const (
	pendingPrefix = "pending:"
	doneValue     = "done"
)

// claimScript sets KEYS[1] to ARGV[1] ("pending:<owner>") for ARGV[2] ms
// when it is absent (or expired) or already ARGV[1], and answers 0
// (Claimed), 1 (Handled: done) or 2 (Busy: another owner's claim); 3 for a
// value that is neither.
var claimScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
	redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
	return 0
end
if v == 'done' then
	return 1
end
if string.sub(v, 1, 8) == 'pending:' then
	return 2
end
return 3
`)

// releaseScript deletes KEYS[1] if it holds ARGV[1] ("pending:<owner>").
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
	return redis.call('DEL', KEYS[1])
end
return 0
`)

// Store is a client.DedupStore in Redis. It is safe for concurrent use.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
}

var _ client.DedupStore = (*Store)(nil)

// New returns a store whose keys are prefix + key in rdb (DefaultPrefix when
// prefix is ""). The caller owns rdb, and closes it after the last call.
// Its timeouts and retries apply: a command that times out is an error of
// Claim, Done or Release.
func New(rdb redis.UniversalClient, prefix string) *Store {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Store{rdb: rdb, prefix: prefix}
}

// millis is d in whole milliseconds, rounded up (Redis's PX precision).
func millis(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// Claim implements client.DedupStore.
func (s *Store) Claim(ctx context.Context, key, owner string, lease time.Duration) (client.ClaimResult, error) {
	if lease <= 0 {
		return client.Busy, fmt.Errorf("redisdedup: claim %q: lease %v is not positive", key, lease)
	}
	n, err := claimScript.Run(ctx, s.rdb, []string{s.prefix + key}, pendingPrefix+owner, millis(lease)).Int64()
	if err != nil {
		return client.Busy, fmt.Errorf("redisdedup: claim %q: %w", key, err)
	}
	switch n {
	case 0:
		return client.Claimed, nil
	case 1:
		return client.Handled, nil
	case 2:
		return client.Busy, nil
	}
	return client.Busy, fmt.Errorf("redisdedup: claim %q: key %q holds a value that is not the store's", key, s.prefix+key)
}

// Done implements client.DedupStore.
func (s *Store) Done(ctx context.Context, key, owner string, window time.Duration) error {
	if window <= 0 {
		return fmt.Errorf("redisdedup: done %q: window %v is not positive", key, window)
	}
	if err := s.rdb.Set(ctx, s.prefix+key, doneValue, time.Duration(millis(window))*time.Millisecond).Err(); err != nil {
		return fmt.Errorf("redisdedup: done %q: %w", key, err)
	}
	return nil
}

// Release implements client.DedupStore.
func (s *Store) Release(ctx context.Context, key, owner string) error {
	if err := releaseScript.Run(ctx, s.rdb, []string{s.prefix + key}, pendingPrefix+owner).Err(); err != nil {
		return fmt.Errorf("redisdedup: release %q: %w", key, err)
	}
	return nil
}
