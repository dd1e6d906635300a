package sinks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/redis/go-redis/v9"

	"github.com/slipstream-sync/slipstream/internal/store"
)

// The redis sink's worker: it applies state records to Redis with one Lua
// script per key, which compares the record's version with the one kept in
// Redis and writes only a newer one, atomically with the value.
//
// Layout in Redis (P = key_prefix):
//
//	P<key>      the value: string (SK), list (SA), sorted set (SW); absent when deleted
//	Pv:<key>    hash {t, o, m}: the version of the value (timestamp, origin,
//	            messageId); a deleted key's version expires after tombstone_ttl
//	Psynced     set at the end of each resync; its absence (a Redis restart, a
//	            FLUSHALL) makes the worker resync
//
// State keys that start with "v:" would collide with version keys; they are
// not mirrored (logged and counted as skipped).

// applyScript is the per-key compare-and-replace. KEYS: value key, version
// key. ARGV: op (SK, SA, SW, DEL), timestamp (20 digits, ordered as the
// int64), origin, messageId, tombstone TTL in ms, then the value: the SK
// JSON; the SA elements; the SW score, member pairs.
var applyScript = redis.NewScript(`
local function cmp(a, b)
  if a == b then return 0 end
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      if x < y then return -1 end
      return 1
    end
  end
  if #a < #b then return -1 end
  return 1
end
local cur = redis.call('HMGET', KEYS[2], 't', 'o', 'm')
if cur[1] then
  local c = cmp(ARGV[2], cur[1])
  if c == 0 then c = cmp(ARGV[3], cur[2] or '') end
  if c == 0 then c = cmp(ARGV[4], cur[3] or '') end
  if c <= 0 then return 0 end
end
local op = ARGV[1]
redis.call('DEL', KEYS[1])
if op == 'SK' then
  redis.call('SET', KEYS[1], ARGV[6])
elseif op == 'SA' then
  for i = 6, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
elseif op == 'SW' then
  for i = 6, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('HSET', KEYS[2], 't', ARGV[2], 'o', ARGV[3], 'm', ARGV[4])
if op == 'DEL' then
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
else
  redis.call('PERSIST', KEYS[2])
end
return 1
`)

// redisBatch is how many keys share one pipelined round trip.
const redisBatch = 256

// redisCheckEvery is how often an idle worker checks that Redis still holds
// what it mirrored (the synced marker and the script).
const redisCheckEvery = time.Second

var errRedisReset = errors.New("redis lost the mirror (restarted or flushed)")

// run is the worker: resync, then apply noted keys; on any Redis error,
// back off and resync again.
func (r *Redis) run(ctx context.Context) {
	defer close(r.done)
	wait, outage := r.backoffMin, false
	fail := func(err error) bool {
		r.up.Store(false)
		r.m.connected.Set(0)
		r.m.writes.WithLabelValues(r.name, "error").Inc()
		if !outage {
			outage = true
			r.log.Warn("redis sink: Redis unavailable; retrying with backoff (the state waits in the store and is resynced)",
				"sink", r.name, "err", err)
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
		wait = min(wait*2, r.backoffMax)
		return true
	}
	check := time.NewTicker(redisCheckEvery)
	defer check.Stop()
	for ctx.Err() == nil {
		if !r.up.Load() {
			if err := r.resync(ctx); err != nil {
				if ctx.Err() != nil || !fail(err) {
					return
				}
				continue
			}
			if outage {
				r.log.Info("redis sink: Redis reachable again; state resynced", "sink", r.name)
			}
			wait, outage = r.backoffMin, false
			r.up.Store(true)
			r.m.connected.Set(1)
		}
		keys := r.take()
		if len(keys) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-r.wake:
			case <-check.C:
				if err := r.check(ctx); err != nil && ctx.Err() == nil && !fail(err) {
					return
				}
			}
			continue
		}
		if err := r.applyKeys(ctx, keys); err != nil {
			r.requeue(keys)
			if ctx.Err() != nil || !fail(err) {
				return
			}
			continue
		}
		r.applied()
	}
}

// take removes and returns the noted keys.
func (r *Redis) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := make([]string, 0, len(r.pending))
	for k := range r.pending {
		keys = append(keys, k)
	}
	clear(r.pending)
	r.taken = len(keys)
	r.m.pending.Set(float64(r.taken))
	return keys
}

// applied records that the taken keys were applied.
func (r *Redis) applied() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.taken = 0
	r.m.pending.Set(float64(len(r.pending)))
}

// requeue notes keys again after a failed attempt.
func (r *Redis) requeue(keys []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range keys {
		r.pending[k] = struct{}{}
	}
	r.taken = 0
	r.m.pending.Set(float64(len(r.pending)))
}

// check verifies that Redis still holds the synced marker and the script.
func (r *Redis) check(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	pipe := r.client.Pipeline()
	marker := pipe.Exists(cctx, r.cfg.KeyPrefix+"synced")
	script := pipe.ScriptExists(cctx, applyScript.Hash())
	if _, err := pipe.Exec(cctx); err != nil {
		return err
	}
	if marker.Val() == 0 || !script.Val()[0] {
		return errRedisReset
	}
	return nil
}

// resync applies every state record of the store, page by page, each page
// in one pipelined round trip. Keys noted before it starts are covered by
// it (their records are committed before they are noted).
func (r *Redis) resync(ctx context.Context) error {
	r.take()
	r.applied()
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := applyScript.Load(cctx, r.client).Err(); err != nil {
		return err
	}
	after := ""
	for {
		page, err := r.store.States("", after, redisBatch)
		if err != nil {
			return fmt.Errorf("read state: %w", err)
		}
		if len(page) == 0 {
			break
		}
		entries := make([]keyRecord, len(page))
		for i := range page {
			entries[i] = keyRecord{page[i].Key, &page[i].StateRecord}
		}
		if err := r.apply(cctx, entries); err != nil {
			return err
		}
		after = page[len(page)-1].Key
	}
	return r.client.Set(cctx, r.cfg.KeyPrefix+"synced", time.Now().UTC().Format(time.RFC3339Nano), 0).Err()
}

type keyRecord struct {
	key string
	rec *store.StateRecord // nil: no record (expired tombstone): nothing to do
}

// applyKeys reads the current record of each key and applies them.
func (r *Redis) applyKeys(ctx context.Context, keys []string) error {
	for len(keys) > 0 {
		n := min(len(keys), redisBatch)
		entries := make([]keyRecord, 0, n)
		err := r.store.DB().View(func(txn *badger.Txn) error {
			for _, k := range keys[:n] {
				rec, err := store.ReadState(txn, k)
				if err != nil {
					return err
				}
				entries = append(entries, keyRecord{k, rec})
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("read state: %w", err)
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = r.apply(cctx, entries)
		cancel()
		if err != nil {
			return err
		}
		keys = keys[n:]
	}
	return nil
}

// apply runs the script for every record in one pipeline.
func (r *Redis) apply(ctx context.Context, entries []keyRecord) error {
	pipe := r.client.Pipeline()
	cmds := make([]*redis.Cmd, 0, len(entries))
	r.mu.Lock()
	ttl := r.tombTTL.Milliseconds()
	r.mu.Unlock()
	for _, e := range entries {
		if e.rec == nil {
			continue
		}
		if strings.HasPrefix(e.key, "v:") {
			r.m.writes.WithLabelValues(r.name, "skipped").Inc()
			r.log.Warn("redis sink: state key starts with \"v:\", which names version keys; not mirrored", "sink", r.name, "key", e.key)
			continue
		}
		args, err := scriptArgs(e.rec, ttl)
		if err != nil {
			r.m.writes.WithLabelValues(r.name, "skipped").Inc()
			r.log.Warn("redis sink: state value not mirrored", "sink", r.name, "key", e.key, "err", err)
			continue
		}
		keys := []string{r.cfg.KeyPrefix + e.key, r.cfg.KeyPrefix + "v:" + e.key}
		cmds = append(cmds, applyScript.EvalSha(ctx, pipe, keys, args...))
	}
	if len(cmds) == 0 {
		return nil
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	for _, c := range cmds {
		if n, _ := c.Int(); n == 1 {
			r.m.writes.WithLabelValues(r.name, "applied").Inc()
		} else {
			r.m.writes.WithLabelValues(r.name, "stale").Inc()
		}
	}
	return nil
}

// scriptArgs are applyScript's ARGV for rec.
func scriptArgs(rec *store.StateRecord, tombTTLms int64) ([]any, error) {
	op := rec.Type
	if rec.Deleted {
		op = "DEL"
	}
	args := []any{op, fmt.Sprintf("%020d", uint64(rec.Timestamp)^1<<63), rec.Origin, rec.MessageID, tombTTLms}
	switch op {
	case "DEL":
	case "SK":
		args = append(args, string(rec.Value))
	case "SA":
		var elems []json.RawMessage
		if err := json.Unmarshal(rec.Value, &elems); err != nil {
			return nil, fmt.Errorf("SA value: %w", err)
		}
		for _, el := range elems {
			args = append(args, string(el))
		}
	case "SW":
		var weights map[string]float64
		if err := json.Unmarshal(rec.Value, &weights); err != nil {
			return nil, fmt.Errorf("SW value: %w", err)
		}
		for member, w := range weights {
			args = append(args, strconv.FormatFloat(w, 'g', -1, 64), member)
		}
	default:
		return nil, fmt.Errorf("unknown state type %q", rec.Type)
	}
	return args, nil
}
