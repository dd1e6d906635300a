package redisdedup_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/slipstream-sync/slipstream/client"
	"github.com/slipstream-sync/slipstream/client/dedupstoretest"
	"github.com/slipstream-sync/slipstream/client/redisdedup"
	"github.com/slipstream-sync/slipstream/internal/testredis"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testredis.IgnoreLeaks())
}

func opCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestConformance(t *testing.T) {
	srv := testredis.Start(t)
	rdb := srv.Client()
	dedupstoretest.Run(t, func(t *testing.T) client.DedupStore { return redisdedup.New(rdb, "") })
}

func TestConformanceCustomPrefix(t *testing.T) {
	srv := testredis.Start(t)
	rdb := srv.Client()
	dedupstoretest.Run(t, func(t *testing.T) client.DedupStore { return redisdedup.New(rdb, "app:dedup:") })
}

// The store's keys are prefix + key, holding "pending:<owner>" then "done",
// with Redis's expiry as the lease or the window; the default prefix is not
// the daemon's.
func TestKeysAndValues(t *testing.T) {
	srv := testredis.Start(t)
	rdb := srv.Client()
	s := redisdedup.New(rdb, "")
	ctx := opCtx(t)
	key := client.DedupKey("azure-1", "msg-abc")
	rkey := "slipstream:receiver-dedup:7:azure-1:msg-abc"
	if redisdedup.DefaultPrefix+key != rkey {
		t.Fatalf("DefaultPrefix+key = %q, want %q", redisdedup.DefaultPrefix+key, rkey)
	}

	if r, err := s.Claim(ctx, key, "r1", 30*time.Second); err != nil || r != client.Claimed {
		t.Fatalf("Claim = %v, %v", r, err)
	}
	if v := rdb.Get(ctx, rkey).Val(); v != "pending:r1" {
		t.Fatalf("after Claim, %s = %q, want pending:r1", rkey, v)
	}
	if ttl := rdb.PTTL(ctx, rkey).Val(); ttl <= 0 || ttl > 30*time.Second {
		t.Fatalf("after Claim, PTTL = %v, want (0, 30s]", ttl)
	}
	if err := s.Done(ctx, key, "r1", time.Hour); err != nil {
		t.Fatal(err)
	}
	if v := rdb.Get(ctx, rkey).Val(); v != "done" {
		t.Fatalf("after Done, %s = %q, want done", rkey, v)
	}
	if ttl := rdb.PTTL(ctx, rkey).Val(); ttl <= 30*time.Second || ttl > time.Hour {
		t.Fatalf("after Done, PTTL = %v, want (30s, 1h]", ttl)
	}
	// Sub-millisecond durations round up to Redis's precision.
	if r, err := s.Claim(ctx, client.DedupKey("azure-1", "msg-def"), "r1", time.Microsecond); err != nil || r != client.Claimed {
		t.Fatalf("Claim with 1µs lease = %v, %v", r, err)
	}
	keys := rdb.Keys(ctx, "*").Val()
	for _, k := range keys {
		if len(k) < len(redisdedup.DefaultPrefix) || k[:len(redisdedup.DefaultPrefix)] != redisdedup.DefaultPrefix {
			t.Errorf("key %q outside the prefix", k)
		}
	}

	// A foreign value is an error, not a Claimed.
	if err := rdb.Set(ctx, redisdedup.DefaultPrefix+"foreign", "something", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Claim(ctx, "foreign", "r1", time.Second); err == nil {
		t.Fatalf("Claim of a foreign value = %v, nil; want an error", r)
	}
}

// Stores with different prefixes in one Redis are independent.
func TestPrefixesIndependent(t *testing.T) {
	srv := testredis.Start(t)
	rdb := srv.Client()
	a, b := redisdedup.New(rdb, "a:"), redisdedup.New(rdb, "b:")
	ctx := opCtx(t)
	if err := a.Done(ctx, "k", "r1", time.Minute); err != nil {
		t.Fatal(err)
	}
	if r, err := b.Claim(ctx, "k", "r2", time.Minute); err != nil || r != client.Claimed {
		t.Fatalf("other prefix: Claim = %v, %v; want claimed", r, err)
	}
	if r, err := a.Claim(ctx, "k", "r2", time.Minute); err != nil || r != client.Handled {
		t.Fatalf("same prefix: Claim = %v, %v; want handled", r, err)
	}
}

// Two receivers, each with its own go-redis client and Store, share one
// Redis and receive the same messages at once (a cluster group's redundant
// instances): for each message exactly one claims it, the other is Busy
// until the first marks it done, then Handled.
func TestTwoReceiversShareOneRedis(t *testing.T) {
	srv := testredis.Start(t)
	stores := []*redisdedup.Store{redisdedup.New(srv.Client(), ""), redisdedup.New(srv.Client(), "")}
	ctx := opCtx(t)
	const messages = 100
	for i := range messages {
		key := client.DedupKey("cg", fmt.Sprint("msg-", i))
		var results [2]client.ClaimResult
		var errs [2]error
		start := make(chan struct{})
		var wg sync.WaitGroup
		for r := range stores {
			wg.Go(func() {
				<-start
				results[r], errs[r] = stores[r].Claim(ctx, key, fmt.Sprint("receiver-", r), 30*time.Second)
			})
		}
		close(start)
		wg.Wait()
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("message %d: Claim errors %v, %v", i, errs[0], errs[1])
		}
		var winner int
		switch results {
		case [2]client.ClaimResult{client.Claimed, client.Busy}:
			winner = 0
		case [2]client.ClaimResult{client.Busy, client.Claimed}:
			winner = 1
		default:
			t.Fatalf("message %d: Claims = %v, want one claimed and one busy", i, results)
		}
		loser := 1 - winner
		if r, err := stores[loser].Claim(ctx, key, fmt.Sprint("receiver-", loser), 30*time.Second); err != nil || r != client.Busy {
			t.Fatalf("message %d: loser's redelivery before Done = %v, %v; want busy", i, r, err)
		}
		if err := stores[winner].Done(ctx, key, fmt.Sprint("receiver-", winner), time.Hour); err != nil {
			t.Fatal(err)
		}
		if r, err := stores[loser].Claim(ctx, key, fmt.Sprint("receiver-", loser), 30*time.Second); err != nil || r != client.Handled {
			t.Fatalf("message %d: loser's redelivery after Done = %v, %v; want handled", i, r, err)
		}
	}
}

// While Redis is down every call fails (Claim never says Claimed); after
// it restarts the store works again, through the same go-redis client.
func TestRedisDown(t *testing.T) {
	srv := testredis.Start(t)
	s := redisdedup.New(srv.Client(), "")
	ctx := opCtx(t)
	if r, err := s.Claim(ctx, "k1", "r1", time.Minute); err != nil || r != client.Claimed {
		t.Fatalf("Claim = %v, %v", r, err)
	}

	srv.Stop()
	if r, err := s.Claim(ctx, "k2", "r1", time.Minute); err == nil {
		t.Fatalf("Claim with Redis down = %v, nil; want an error", r)
	} else {
		t.Logf("Claim with Redis down: %v", err)
	}
	if err := s.Done(ctx, "k1", "r1", time.Minute); err == nil {
		t.Fatal("Done with Redis down: nil error, want one")
	}
	if err := s.Release(ctx, "k1", "r1"); err == nil {
		t.Fatal("Release with Redis down: nil error, want one")
	}

	srv.Restart() // empty: nothing was persisted
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The client's pooled connections died with the server: the first
		// commands may fail until it dials again.
		r, err := s.Claim(ctx, "k2", "r1", time.Minute)
		if err == nil {
			if r != client.Claimed {
				t.Fatalf("Claim after the restart = %v, want claimed", r)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Claim still failing 10s after Redis restarted: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := s.Done(ctx, "k2", "r1", time.Minute); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Claim(ctx, "k2", "r2", time.Minute); err != nil || r != client.Handled {
		t.Fatalf("Claim after Done = %v, %v; want handled", r, err)
	}
}
