package badgerdedup_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"go.uber.org/goleak"

	"github.com/slipstream-sync/slipstream/client"
	"github.com/slipstream-sync/slipstream/client/badgerdedup"
	"github.com/slipstream-sync/slipstream/client/dedupstoretest"
)

// childDirEnv makes the test binary a child process that writes to the
// store in that directory and exits without closing it (a crash).
const childDirEnv = "BADGERDEDUP_TEST_CHILD_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childDirEnv); dir != "" {
		crashingChild(dir)
		return
	}
	goleak.VerifyTestMain(m)
}

func opCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func open(t *testing.T, dir string) *badgerdedup.Store {
	t.Helper()
	s, err := badgerdedup.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func wantClaim(t *testing.T, s client.DedupStore, key, owner string, lease time.Duration, want client.ClaimResult) {
	t.Helper()
	r, err := s.Claim(opCtx(t), key, owner, lease)
	if err != nil || r != want {
		t.Fatalf("Claim(%q, %q) = %v, %v; want %v", key, owner, r, err, want)
	}
}

func TestConformance(t *testing.T) {
	dedupstoretest.Run(t, func(t *testing.T) client.DedupStore { return open(t, t.TempDir()) })
}

// A store in an application's database (here one that syncs its writes).
func TestConformanceNew(t *testing.T) {
	db, err := badger.Open(badger.DefaultOptions(t.TempDir()).WithLogger(nil).WithSyncWrites(true))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	dedupstoretest.Run(t, func(t *testing.T) client.DedupStore { return badgerdedup.New(db) })
}

// New keeps to KeyPrefix, sets a Badger TTL no earlier than the store's
// expiry, and its Close leaves the application's database open.
func TestNewInApplicationDB(t *testing.T) {
	db, err := badger.Open(badger.DefaultOptions("").WithInMemory(true).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("app/k"), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	s := badgerdedup.New(db)
	ctx := opCtx(t)
	key := client.DedupKey("azure-1", "msg-abc")
	wantClaim(t, s, key, "r1", time.Minute, client.Claimed)
	before := time.Now()
	if err := s.Done(ctx, key, "r1", 90*time.Second); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	var keys []string
	err = db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			keys = append(keys, string(item.Key()))
			if strings.HasPrefix(string(item.Key()), badgerdedup.KeyPrefix) {
				exp := item.ExpiresAt()
				if lo, hi := uint64(before.Add(90*time.Second).Unix()), uint64(after.Add(90*time.Second).Unix())+1; exp < lo || exp > hi {
					t.Errorf("ExpiresAt = %d, want in [%d, %d]", exp, lo, hi)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"app/k", badgerdedup.KeyPrefix + key}; fmt.Sprint(keys) != fmt.Sprint(want) {
		t.Errorf("keys = %q, want %q", keys, want)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if db.IsClosed() {
		t.Fatal("Close of a New store closed the application's database")
	}
	wantClaim(t, s, key, "r2", time.Minute, client.Handled)
}

// A message marked done is still Handled after the store is closed and
// opened again; one whose window expired meanwhile is new.
func TestDoneSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	ctx := opCtx(t)
	wantClaim(t, s, "long", "r1", time.Minute, client.Claimed)
	if err := s.Done(ctx, "long", "r1", time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.Done(ctx, "short", "r1", 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Claim(ctx, "x", "r1", time.Minute); err == nil {
		t.Fatal("Claim after Close: nil error, want one")
	}

	time.Sleep(100 * time.Millisecond)
	s = open(t, dir)
	wantClaim(t, s, "long", "r2", time.Minute, client.Handled)
	wantClaim(t, s, "short", "r2", time.Minute, client.Claimed)
}

// Only one process may open a directory.
func TestOpenLocked(t *testing.T) {
	dir := t.TempDir()
	open(t, dir)
	if s, err := badgerdedup.Open(dir); err == nil {
		s.Close()
		t.Fatal("second Open of one directory succeeded")
	}
}

// childLease is the lease of the claim the crashing child leaves behind.
const childLease = 1500 * time.Millisecond

// crashingChild claims "pending", claims and marks "done" done, then exits
// without closing the store: what survives is what was on disk.
func crashingChild(dir string) {
	s, err := badgerdedup.Open(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx := context.Background()
	if r, err := s.Claim(ctx, "pending", "child", childLease); err != nil || r != client.Claimed {
		fmt.Fprintln(os.Stderr, "claim pending:", r, err)
		os.Exit(2)
	}
	if r, err := s.Claim(ctx, "done", "child", childLease); err != nil || r != client.Claimed {
		fmt.Fprintln(os.Stderr, "claim done:", r, err)
		os.Exit(2)
	}
	if err := s.Done(ctx, "done", "child", time.Hour); err != nil {
		fmt.Fprintln(os.Stderr, "done:", err)
		os.Exit(2)
	}
	os.Exit(0) // no Close
}

// A process that dies without closing the store: its Done survives, and its
// pending claim is Busy to another owner until its lease expires, then
// Claimed.
func TestCrashedProcess(t *testing.T) {
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childDirEnv+"="+dir)
	if _, err := cmd.Output(); err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("child: %v: %s", err, stderr)
	}

	s := open(t, dir)
	wantClaim(t, s, "done", "parent", time.Minute, client.Handled)
	r, err := s.Claim(opCtx(t), "pending", "parent", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case r == client.Busy:
	case r == client.Claimed && time.Since(start) > childLease:
		t.Skipf("the child's lease (%v) expired before the check: the machine is too slow for this test", childLease)
	default:
		t.Fatalf("Claim of the child's pending key = %v, want busy", r)
	}
	deadline := time.Now().Add(childLease + 10*time.Second)
	for {
		r, err := s.Claim(opCtx(t), "pending", "parent", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if r == client.Claimed {
			break
		}
		if r != client.Busy || time.Now().After(deadline) {
			t.Fatalf("Claim of the child's pending key = %v after its lease", r)
		}
		time.Sleep(50 * time.Millisecond)
	}
	wantClaim(t, s, "pending", "other", time.Minute, client.Busy)
}
