package daemon_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/daemon"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// countKeys counts the store's keys that start with prefix.
func countKeys(t *testing.T, st *store.Store, prefix string) int {
	t.Helper()
	n := 0
	err := st.DB().View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = []byte(prefix)
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// acker reads every delivery of c and acknowledges it, counting them, until
// c closes.
type acker struct {
	mu   sync.Mutex
	seen int
	done chan struct{}
}

func ackAll(c *wsClient) *acker {
	a := &acker{done: make(chan struct{})}
	go func() {
		defer close(a.done)
		for b := range c.in {
			m, err := slipstream.Decode(b, slipstream.DefaultLimits())
			if err != nil || !m.Type.IsData() {
				continue
			}
			ack := slipstream.Encode(&slipstream.Message{Type: slipstream.TypeACK, MessageID: m.MessageID, ClusterGroupID: m.ClusterGroupID})
			if c.conn.WriteMessage(1, ack) != nil {
				continue // closing; keep draining
			}
			a.mu.Lock()
			a.seen++
			a.mu.Unlock()
		}
	}()
	return a
}

func (a *acker) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen
}

// publishRound sends n data messages from pub without waiting, then reads
// their n ACKs. value is the raw JSON value of each.
func publishRound(t *testing.T, pub *wsClient, round, n int, value func(i int) string) {
	t.Helper()
	for i := range n {
		pub.sendString(sk(fmt.Sprintf("r%d-%d", round, i), "k"+strconv.Itoa(i%100), value(i)))
	}
	for range n {
		if m := pub.next(); m.Type != slipstream.TypeACK {
			t.Fatalf("round %d: got %s, want ACKs", round, slipstream.Encode(m))
		}
	}
}

// waitDrained waits until every outbox entry is gone from the store.
func waitDrained(t *testing.T, st *store.Store, what string) {
	t.Helper()
	testutil.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		if n := countKeys(t, st, "o/"); n != 0 {
			return fmt.Errorf("%s: %d outbox keys (o/) left", what, n)
		}
		return nil
	})
}

// With a subscriber that acknowledges everything, completed deliveries are
// deleted: after each round of publishing, no outbox key is left, and
// nothing was dead-lettered.
func TestRetentionCompletedDeliveriesAreDeleted(t *testing.T) {
	rounds, perRound := 4, 1000
	if !testing.Short() && os.Getenv("SLIPSTREAM_SOAK") != "" {
		rounds, perRound = 10, 2000 // 20,000 messages
	}
	in := startInstance(t, instanceHCL("local-1", t.TempDir(), ""))
	sub := hello(t, in.url, "sub")
	acks := ackAll(sub)
	pub := hello(t, in.url, "pub")

	for r := range rounds {
		publishRound(t, pub, r, perRound, func(i int) string { return strconv.Itoa(i) })
		waitDrained(t, in.Store(), fmt.Sprintf("after round %d", r))
		if n, err := in.Store().CountOutbox("sub"); err != nil || n != 0 {
			t.Fatalf("after round %d: CountOutbox = %d, %v", r, n, err)
		}
	}
	if got, want := acks.count(), rounds*perRound; got < want {
		t.Fatalf("subscriber acknowledged %d deliveries, want %d", got, want)
	}
	if n := countKeys(t, in.Store(), "q/"); n != 0 {
		t.Fatalf("%d dead letters, want none", n)
	}
	// The dedup markers stay for their window (1h here), one per message.
	if n := countKeys(t, in.Store(), "x/"); n != rounds*perRound {
		t.Fatalf("%d dedup markers, want %d", n, rounds*perRound)
	}
}

// TestSoakStoreSize publishes rounds of messages to an acknowledging
// subscriber under a steady load and logs the store's size (LSM + value
// log) after each round, to show that it levels off. One message in five
// carries a 6 KiB value (above Badger's 4 KiB value threshold: it goes to
// the value log); the others are small (they stay in the LSM tree). The
// dedup window is short (SLIPSTREAM_SOAK_WINDOW, default 10s) so that the
// number of live dedup markers (rate x window) is steady after a few
// seconds, and value-log GC runs every 5 seconds instead of 5 minutes.
//
// It runs only with SLIPSTREAM_SOAK=1 (BENCHMARKS.md, "Retention"):
//
//	SLIPSTREAM_SOAK=1 SLIPSTREAM_SOAK_ROUNDS=300 go test -run TestSoakStoreSize -v -timeout 30m ./internal/daemon/
func TestSoakStoreSize(t *testing.T) {
	if os.Getenv("SLIPSTREAM_SOAK") != "1" {
		t.Skip("set SLIPSTREAM_SOAK=1 to run the store-size soak")
	}
	rounds, perRound := 40, 5000
	if v, err := strconv.Atoi(os.Getenv("SLIPSTREAM_SOAK_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	if v, err := strconv.Atoi(os.Getenv("SLIPSTREAM_SOAK_PER_ROUND")); err == nil && v > 0 {
		perRound = v
	}
	window := "10s"
	if v := os.Getenv("SLIPSTREAM_SOAK_WINDOW"); v != "" {
		window = v
	}
	hcl := strings.Replace(instanceHCL("soak-1", t.TempDir(), ""), `window = "1h"`, fmt.Sprintf("window = %q", window), 1)
	in := startInstanceWith(t, hcl, daemon.Options{StoreGCInterval: 5 * time.Second})
	defer in.stop()
	sub := hello(t, in.url, "sub")
	ackAll(sub)
	pub := hello(t, in.url, "pub")
	big := `"` + strings.Repeat("x", 6<<10) + `"`

	start := time.Now()
	t.Logf("%5s %9s %8s %10s %10s %10s %10s", "round", "messages", "elapsed", "lsm", "vlog", "lsm+vlog", "data dir")
	for r := range rounds {
		publishRound(t, pub, r, perRound, func(i int) string {
			if i%5 == 0 {
				return big
			}
			return fmt.Sprintf(`{"n":%d,"status":"paid","amount":%d}`, i, i*7)
		})
		waitDrained(t, in.Store(), fmt.Sprintf("round %d", r))
		lsm, vlog := in.Store().Size()
		t.Logf("%5d %9d %8s %10s %10s %10s %10s", r+1, (r+1)*perRound, time.Since(start).Round(time.Second),
			mib(lsm), mib(vlog), mib(lsm+vlog), mib(in.Store().DiskUsage()))
	}
	mfs, err := in.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "slipstream_store_gc_runs_total" {
			for _, m := range mf.GetMetric() {
				t.Logf("%s{outcome=%q} %v", mf.GetName(), m.GetLabel()[0].GetValue(), m.GetCounter().GetValue())
			}
		}
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
