package client_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/slipstream-sync/slipstream/client"
	"github.com/slipstream-sync/slipstream/client/dedupstoretest"
)

func TestMemoryDedupConformance(t *testing.T) {
	dedupstoretest.Run(t, func(t *testing.T) client.DedupStore { return client.NewMemoryDedup(0) })
}

// A small store shared by the subtests holds every key they use at once.
func TestMemoryDedupConformanceShared(t *testing.T) {
	s := client.NewMemoryDedup(1000)
	dedupstoretest.Run(t, func(t *testing.T) client.DedupStore { return s })
	if n := s.Evictions(); n != 0 {
		t.Errorf("Evictions = %d, want 0", n)
	}
}

func mustClaim(t *testing.T, s *client.MemoryDedup, key, owner string, lease time.Duration, want client.ClaimResult) {
	t.Helper()
	r, err := s.Claim(context.Background(), key, owner, lease)
	if err != nil || r != want {
		t.Fatalf("Claim(%q, %q) = %v, %v; want %v", key, owner, r, err, want)
	}
}

func mustDone(t *testing.T, s *client.MemoryDedup, key string, window time.Duration) {
	t.Helper()
	if err := s.Done(context.Background(), key, "x", window); err != nil {
		t.Fatal(err)
	}
}

func wantLenEvictions(t *testing.T, s *client.MemoryDedup, n int, ev uint64) {
	t.Helper()
	if s.Len() != n || s.Evictions() != ev {
		t.Fatalf("Len, Evictions = %d, %d; want %d, %d", s.Len(), s.Evictions(), n, ev)
	}
}

// When the store is full, a new key evicts the key written least recently,
// and counts it.
func TestMemoryDedupEvictsLeastRecentlyWritten(t *testing.T) {
	s := client.NewMemoryDedup(3)
	mustClaim(t, s, "a", "o", time.Minute, client.Claimed)
	mustClaim(t, s, "b", "o", time.Minute, client.Claimed)
	mustClaim(t, s, "c", "o", time.Minute, client.Claimed)
	wantLenEvictions(t, s, 3, 0)

	mustDone(t, s, "a", time.Minute) // a is now the latest write: b is the oldest
	mustClaim(t, s, "d", "o", time.Minute, client.Claimed)
	wantLenEvictions(t, s, 3, 1)
	mustClaim(t, s, "a", "p", time.Minute, client.Handled)
	mustClaim(t, s, "c", "p", time.Minute, client.Busy)
	mustClaim(t, s, "d", "p", time.Minute, client.Busy)
	mustClaim(t, s, "c", "o", time.Minute, client.Claimed) // a re-entrant claim is a write: c is the latest
	wantLenEvictions(t, s, 3, 1)

	// Now a, d, c from the oldest. b was evicted: it is claimable again,
	// and evicts a, done but within its window: dedup of a is lost.
	mustClaim(t, s, "b", "p", time.Minute, client.Claimed)
	wantLenEvictions(t, s, 3, 2)
	mustClaim(t, s, "c", "p", time.Minute, client.Busy)
	mustClaim(t, s, "d", "p", time.Minute, client.Busy)
	mustClaim(t, s, "a", "p", time.Minute, client.Claimed) // evicts d
	wantLenEvictions(t, s, 3, 3)
	mustClaim(t, s, "b", "o", time.Minute, client.Busy)
	mustClaim(t, s, "c", "p", time.Minute, client.Busy)

	// A released key leaves room: no eviction.
	if err := s.Release(context.Background(), "c", "o"); err != nil {
		t.Fatal(err)
	}
	mustClaim(t, s, "e", "o", time.Minute, client.Claimed)
	wantLenEvictions(t, s, 3, 3)
}

// Expired keys go before live ones, and are not counted as evictions.
func TestMemoryDedupDropsExpiredFirst(t *testing.T) {
	s := client.NewMemoryDedup(3)
	mustClaim(t, s, "a", "o", time.Minute, client.Claimed)
	mustClaim(t, s, "b", "o", 20*time.Millisecond, client.Claimed)
	mustDone(t, s, "c", 20*time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for {
		// c expires, and b (which expires before c) too; a (the oldest) stays.
		r, err := s.Claim(context.Background(), "c", "p", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if r == client.Claimed {
			break
		}
		if r != client.Handled || time.Now().After(deadline) {
			t.Fatalf("c still %v", r)
		}
		time.Sleep(10 * time.Millisecond)
	}
	wantLenEvictions(t, s, 2, 0) // a, c
	mustClaim(t, s, "d", "o", time.Minute, client.Claimed)
	wantLenEvictions(t, s, 3, 0)
	mustClaim(t, s, "a", "p", time.Minute, client.Busy)
	mustClaim(t, s, "c", "o", time.Minute, client.Busy) // p's
	mustClaim(t, s, "d", "p", time.Minute, client.Busy)
}

// Expired keys are dropped by later writes even when the store is not full:
// its memory follows the live keys, not the keys ever seen.
func TestMemoryDedupDropsExpiredLazily(t *testing.T) {
	s := client.NewMemoryDedup(0)
	for i := range 100 {
		mustDone(t, s, fmt.Sprint("k", i), time.Millisecond)
	}
	time.Sleep(5 * time.Millisecond)
	mustClaim(t, s, "live", "o", time.Minute, client.Claimed)
	wantLenEvictions(t, s, 1, 0)
	if err := s.Release(context.Background(), "live", "o"); err != nil {
		t.Fatal(err)
	}
	wantLenEvictions(t, s, 0, 0)
}

func TestMemoryDedupDefaultCapacity(t *testing.T) {
	s := client.NewMemoryDedup(-1)
	for i := range client.DefaultMemoryDedupEntries + 10 {
		mustDone(t, s, fmt.Sprint(i), time.Minute)
	}
	wantLenEvictions(t, s, client.DefaultMemoryDedupEntries, 10)
	mustClaim(t, s, "10", "o", time.Minute, client.Handled)
	mustClaim(t, s, "9", "o", time.Minute, client.Claimed)
}
