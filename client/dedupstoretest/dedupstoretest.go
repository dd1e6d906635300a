// Package dedupstoretest is the conformance suite of client.DedupStore: the
// tests every implementation runs (client.MemoryDedup, client/redisdedup,
// client/badgerdedup, or an application's own store) so that
// Session.Subscribe behaves the same whatever store it is given.
//
//	func TestConformance(t *testing.T) {
//		dedupstoretest.Run(t, func(t *testing.T) client.DedupStore {
//			return mystore.New(...) // a store of its own, closed by t.Cleanup
//		})
//	}
//
// The suite uses real time with short leases and windows (50 ms to a few
// hundred ms) and polls for expiry, so it runs in a few seconds and does not
// depend on the machine's speed: it checks that an expired claim or done
// mark is eventually gone, never that it is gone by a deadline. Run it with
// -race: it includes concurrent claims of one key by many owners.
//
// Beyond the semantics documented on client.DedupStore, the suite requires
// what Session.Subscribe relies on: a re-entrant Claim replaces the owner's
// lease; Done marks a key done whatever its state (absent, or claimed by
// anyone); Release by an owner whose claim expired and was taken by another
// owner is a no-op; a non-positive lease or window is an error and records
// nothing; a call with a cancelled context returns an error (unless the
// store is run with IgnoresContext).
package dedupstoretest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/slipstream-sync/slipstream/client"
)

// Option adjusts the suite to a store.
type Option func(*config)

type config struct {
	ignoresContext bool
}

// IgnoresContext tells the suite that the store may ignore its context (it
// does no I/O): the cancelled-context test then only checks that calls with
// a cancelled context do not panic. By default they must return an error.
func IgnoresContext() Option { return func(c *config) { c.ignoresContext = true } }

const (
	long    = time.Minute           // a lease or window that does not expire during a test
	short   = 50 * time.Millisecond // one that does, soon
	expiry  = 10 * time.Second      // how long an expired key may take to be gone
	opLimit = 10 * time.Second      // the deadline of one store call
)

var runs atomic.Uint64

// Run runs the conformance suite as subtests of t. open returns the store
// under test; it is called once per subtest, and may return a new store or
// one shared by the subtests (every subtest uses keys of its own, unique
// even across runs of the suite against one persistent store). Closing the
// store is open's business (t.Cleanup).
func Run(t *testing.T, open func(t *testing.T) client.DedupStore, opts ...Option) {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	// Keys of this run: unique across processes sharing a Redis, say.
	nonce := fmt.Sprintf("dedupstoretest-%d-%d", time.Now().UnixNano(), runs.Add(1))
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, *harness)
	}{
		{"ClaimFreshKey", testClaimFresh},
		{"BusyWhileOthersClaim", testBusy},
		{"HandledAfterDone", testHandledAfterDone},
		{"DoneWithoutClaim", testDoneWithoutClaim},
		{"DoneOverAnotherOwnersClaim", testDoneOverOthersClaim},
		{"ReentrantClaimExtendsLease", testReentrant},
		{"LeaseExpiry", testLeaseExpiry},
		{"WindowExpiry", testWindowExpiry},
		{"ReleaseLetsAnotherClaim", testRelease},
		{"ReleaseByNonOwnerIsNoop", testReleaseByNonOwner},
		{"ReleaseOfDoneKeyIsNoop", testReleaseDone},
		{"ReleaseOfAbsentKey", testReleaseAbsent},
		{"StaleReleaseAfterLeaseExpiry", testStaleRelease},
		{"DistinctKeysIndependent", testDistinctKeys},
		{"ConcurrentClaimOneWinner", testConcurrentClaim},
		{"ConcurrentReceivers", testConcurrentReceivers},
		{"NonPositiveDurations", testNonPositive},
		{"CancelledContext", func(t *testing.T, h *harness) { testCancelled(t, h, cfg.ignoresContext) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &harness{t: t, s: open(t), prefix: nonce + "/" + tc.name}
			tc.fn(t, h)
		})
	}
}

// harness wraps the store under test with fatal-on-error helpers.
type harness struct {
	t      *testing.T
	s      client.DedupStore
	prefix string
	n      int
}

// key returns a fresh key of the subtest.
func (h *harness) key() string {
	h.n++
	return client.DedupKey(h.prefix, fmt.Sprint("msg-", h.n))
}

// opCtx is the context of one store call.
func opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), opLimit)
}

func (h *harness) claim(key, owner string, lease time.Duration) client.ClaimResult {
	h.t.Helper()
	c, cancel := opCtx()
	defer cancel()
	r, err := h.s.Claim(c, key, owner, lease)
	if err != nil {
		h.t.Fatalf("Claim(%q, %q, %v): %v", key, owner, lease, err)
	}
	return r
}

func (h *harness) wantClaim(key, owner string, lease time.Duration, want client.ClaimResult) {
	h.t.Helper()
	if r := h.claim(key, owner, lease); r != want {
		h.t.Fatalf("Claim(%q, %q, %v) = %v, want %v", key, owner, lease, r, want)
	}
}

func (h *harness) done(key, owner string, window time.Duration) {
	h.t.Helper()
	c, cancel := opCtx()
	defer cancel()
	if err := h.s.Done(c, key, owner, window); err != nil {
		h.t.Fatalf("Done(%q, %q, %v): %v", key, owner, window, err)
	}
}

func (h *harness) release(key, owner string) {
	h.t.Helper()
	c, cancel := opCtx()
	defer cancel()
	if err := h.s.Release(c, key, owner); err != nil {
		h.t.Fatalf("Release(%q, %q): %v", key, owner, err)
	}
}

// eventuallyClaimed polls Claim(key, owner, long) until it returns Claimed;
// every earlier answer must be before.
func (h *harness) eventuallyClaimed(key, owner string, before client.ClaimResult) {
	h.t.Helper()
	deadline := time.Now().Add(expiry)
	for {
		r := h.claim(key, owner, long)
		if r == client.Claimed {
			return
		}
		if r != before {
			h.t.Fatalf("Claim(%q, %q) = %v while waiting for the key to expire, want %v then %v",
				key, owner, r, before, client.Claimed)
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("Claim(%q, %q) still %v %v after the key should have expired", key, owner, r, expiry)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testClaimFresh(t *testing.T, h *harness) {
	h.wantClaim(h.key(), "a", long, client.Claimed)
}

func testBusy(t *testing.T, h *harness) {
	k := h.key()
	h.wantClaim(k, "a", long, client.Claimed)
	h.wantClaim(k, "b", long, client.Busy)
	h.wantClaim(k, "c", long, client.Busy)
	h.wantClaim(k, "a", long, client.Claimed) // still a's
}

func testHandledAfterDone(t *testing.T, h *harness) {
	k := h.key()
	h.wantClaim(k, "a", long, client.Claimed)
	h.done(k, "a", long)
	h.wantClaim(k, "a", long, client.Handled)
	h.wantClaim(k, "b", long, client.Handled)
	h.done(k, "a", long) // Done twice is fine
	h.wantClaim(k, "b", long, client.Handled)
}

func testDoneWithoutClaim(t *testing.T, h *harness) {
	k := h.key()
	h.done(k, "a", long)
	h.wantClaim(k, "a", long, client.Handled)
	h.wantClaim(k, "b", long, client.Handled)
}

// Done marks the key done whatever its state: here, another owner's claim.
func testDoneOverOthersClaim(t *testing.T, h *harness) {
	k := h.key()
	h.wantClaim(k, "a", long, client.Claimed)
	h.done(k, "b", long)
	h.wantClaim(k, "c", long, client.Handled)
	h.wantClaim(k, "a", long, client.Handled)
	h.release(k, "a")
	h.wantClaim(k, "c", long, client.Handled)
}

// A second Claim by the owner is Claimed and replaces the lease: a short
// lease extended to a long one outlives the short one.
func testReentrant(t *testing.T, h *harness) {
	k := h.key()
	h.wantClaim(k, "a", short, client.Claimed)
	h.wantClaim(k, "a", long, client.Claimed)
	time.Sleep(6 * short) // the first lease is over
	h.wantClaim(k, "b", long, client.Busy)
	h.wantClaim(k, "a", long, client.Claimed)
}

func testLeaseExpiry(t *testing.T, h *harness) {
	k := h.key()
	h.wantClaim(k, "a", short, client.Claimed)
	h.eventuallyClaimed(k, "b", client.Busy)
	h.wantClaim(k, "a", long, client.Busy) // b's now
	h.done(k, "b", long)
	h.wantClaim(k, "a", long, client.Handled)

	// The owner itself may claim again after its lease expired.
	k = h.key()
	h.wantClaim(k, "a", short, client.Claimed)
	time.Sleep(2 * short)
	h.wantClaim(k, "a", long, client.Claimed)
	h.wantClaim(k, "b", long, client.Busy)
}

func testWindowExpiry(t *testing.T, h *harness) {
	k := h.key()
	h.wantClaim(k, "a", long, client.Claimed)
	h.done(k, "a", short)
	h.eventuallyClaimed(k, "b", client.Handled)
	h.wantClaim(k, "c", long, client.Busy) // a fresh claim of b's
}

func testRelease(t *testing.T, h *harness) {
	k := h.key()
	h.wantClaim(k, "a", long, client.Claimed)
	h.release(k, "a")
	h.wantClaim(k, "b", long, client.Claimed)
	h.wantClaim(k, "a", long, client.Busy)
	h.release(k, "b")
	h.wantClaim(k, "a", long, client.Claimed) // the owner that released may claim again
}

func testReleaseByNonOwner(t *testing.T, h *harness) {
	k := h.key()
	h.wantClaim(k, "a", long, client.Claimed)
	h.release(k, "b")
	h.wantClaim(k, "c", long, client.Busy)
	h.wantClaim(k, "a", long, client.Claimed)
}

func testReleaseDone(t *testing.T, h *harness) {
	k := h.key()
	h.wantClaim(k, "a", long, client.Claimed)
	h.done(k, "a", long)
	h.release(k, "a")
	h.release(k, "b")
	h.wantClaim(k, "b", long, client.Handled)
	h.wantClaim(k, "a", long, client.Handled)
}

func testReleaseAbsent(t *testing.T, h *harness) {
	k := h.key()
	h.release(k, "a")
	h.wantClaim(k, "a", long, client.Claimed)
}

// An owner whose lease expired, and whose message another owner claimed
// since, must not drop the new claim with a late Release.
func testStaleRelease(t *testing.T, h *harness) {
	k := h.key()
	h.wantClaim(k, "a", short, client.Claimed)
	h.eventuallyClaimed(k, "b", client.Busy)
	h.release(k, "a")
	h.wantClaim(k, "c", long, client.Busy)
	h.wantClaim(k, "b", long, client.Claimed)
}

func testDistinctKeys(t *testing.T, h *harness) {
	// Pairs that a plain "cg:id" join would confuse.
	k1 := client.DedupKey(h.prefix+"a:b", "c")
	k2 := client.DedupKey(h.prefix+"a", "b:c")
	if k1 == k2 {
		t.Fatalf("DedupKey(%q, %q) == DedupKey(%q, %q) == %q", h.prefix+"a:b", "c", h.prefix+"a", "b:c", k1)
	}
	h.wantClaim(k1, "a", long, client.Claimed)
	h.done(k1, "a", long)
	h.wantClaim(k2, "b", long, client.Claimed)
	h.wantClaim(k1, "b", long, client.Handled)
	h.release(k2, "b")
	h.wantClaim(k1, "b", long, client.Handled)

	// Keys that are prefixes of each other, or hold unusual bytes.
	keys := []string{
		client.DedupKey(h.prefix, ""),
		client.DedupKey(h.prefix, "m"),
		client.DedupKey(h.prefix, "m1"),
		client.DedupKey(h.prefix, "m1 "),
		client.DedupKey(h.prefix, "m\x00"),
		client.DedupKey(h.prefix, "m\n*"),
		client.DedupKey(h.prefix, "mé€😀"),
		client.DedupKey(h.prefix, "pending:a"),
		client.DedupKey(h.prefix, "done"),
		client.DedupKey(h.prefix, strings.Repeat("x", 1000)),
		client.DedupKey(h.prefix+"m", ""),
	}
	seen := make(map[string]bool)
	for i, k := range keys {
		if seen[k] {
			t.Fatalf("key %d (%q) repeats an earlier key", i, k)
		}
		seen[k] = true
		owner := fmt.Sprint("owner-", i)
		h.wantClaim(k, owner, long, client.Claimed)
		if i%2 == 0 {
			h.done(k, owner, long)
		}
	}
	for i, k := range keys {
		want := client.Busy
		if i%2 == 0 {
			want = client.Handled
		}
		h.wantClaim(k, "other", long, want)
		if i%2 != 0 {
			want = client.Claimed // the owner's own claim
		}
		h.wantClaim(k, fmt.Sprint("owner-", i), long, want)
	}
}

// N owners claim one fresh key at once: exactly one is Claimed, the others
// are Busy; after its Done, all are Handled.
func testConcurrentClaim(t *testing.T, h *harness) {
	const owners, rounds = 8, 10
	for round := 0; round < rounds; round++ {
		k := h.key()
		results := make([]client.ClaimResult, owners)
		errs := make([]error, owners)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := 0; i < owners; i++ {
			wg.Go(func() {
				c, cancel := opCtx()
				defer cancel()
				<-start
				results[i], errs[i] = h.s.Claim(c, k, fmt.Sprint("owner-", i), long)
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for i := range owners {
			if errs[i] != nil {
				t.Fatalf("round %d: Claim by owner-%d: %v", round, i, errs[i])
			}
			switch results[i] {
			case client.Claimed:
				if winner >= 0 {
					t.Fatalf("round %d: owner-%d and owner-%d both Claimed %q", round, winner, i, k)
				}
				winner = i
			case client.Busy:
			default:
				t.Fatalf("round %d: Claim by owner-%d = %v, want Claimed or Busy", round, i, results[i])
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no owner Claimed %q: %v", round, k, results)
		}
		h.done(k, fmt.Sprint("owner-", winner), long)
		for i := range owners {
			h.wantClaim(k, fmt.Sprint("owner-", i), long, client.Handled)
		}
	}
}

// Receivers use the store as Session.Subscribe does, each receiving every
// message (redundant deliveries): Claim, and when Claimed handle it and mark
// it Done, or (for some) fail and Release it. Every message is handled
// exactly once.
func testConcurrentReceivers(t *testing.T, h *harness) {
	const receivers, messages = 6, 40
	keys := make([]string, messages)
	for i := range keys {
		keys[i] = h.key()
	}
	handled := make([]atomic.Int32, messages)
	failed := make([]atomic.Bool, messages)
	errc := make(chan error, receivers)
	var wg sync.WaitGroup
	for r := 0; r < receivers; r++ {
		wg.Go(func() {
			c, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			owner := fmt.Sprint("receiver-", r)
			pending := make([]int, messages)
			for i := range pending {
				pending[i] = (i + r*7) % messages // each receiver in its own order
			}
			deadline := time.Now().Add(30 * time.Second)
			for len(pending) > 0 {
				if time.Now().After(deadline) {
					errc <- fmt.Errorf("%s: %d messages still Busy after 30s", owner, len(pending))
					return
				}
				var busy []int
				for _, i := range pending {
					res, err := h.s.Claim(c, keys[i], owner, long)
					if err != nil {
						errc <- fmt.Errorf("%s: Claim: %v", owner, err)
						return
					}
					switch res {
					case client.Busy:
						busy = append(busy, i) // redelivered later
					case client.Claimed:
						// The first handling of every third message fails.
						if i%3 == 0 && failed[i].CompareAndSwap(false, true) {
							if err := h.s.Release(c, keys[i], owner); err != nil {
								errc <- fmt.Errorf("%s: Release: %v", owner, err)
								return
							}
							busy = append(busy, i)
							continue
						}
						handled[i].Add(1)
						if err := h.s.Done(c, keys[i], owner, long); err != nil {
							errc <- fmt.Errorf("%s: Done: %v", owner, err)
							return
						}
					}
				}
				pending = busy
				if len(pending) > 0 {
					time.Sleep(time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	for i := range handled {
		if n := handled[i].Load(); n != 1 {
			t.Errorf("message %d handled %d times, want once", i, n)
		}
	}
}

func testNonPositive(t *testing.T, h *harness) {
	k := h.key()
	c, cancel := opCtx()
	defer cancel()
	for _, d := range []time.Duration{0, -time.Second} {
		if r, err := h.s.Claim(c, k, "a", d); err == nil {
			t.Errorf("Claim with lease %v = %v, nil; want an error", d, r)
		}
		if err := h.s.Done(c, k, "a", d); err == nil {
			t.Errorf("Done with window %v: nil error, want one", d)
		}
	}
	// Nothing was recorded: the key is free.
	h.wantClaim(k, "b", long, client.Claimed)
}

func testCancelled(t *testing.T, h *harness, ignoresContext bool) {
	c, cancel := context.WithCancel(context.Background())
	cancel()
	k := h.key()
	r, errClaim := h.s.Claim(c, k, "a", long)
	errDone := h.s.Done(c, h.key(), "a", long)
	errRelease := h.s.Release(c, k, "a")
	if ignoresContext {
		return
	}
	if errClaim == nil {
		t.Errorf("Claim with a cancelled context = %v, nil; want an error", r)
	}
	if errDone == nil {
		t.Error("Done with a cancelled context: nil error, want one")
	}
	if errRelease == nil {
		t.Error("Release with a cancelled context: nil error, want one")
	}
}
