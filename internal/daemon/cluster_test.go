package daemon_test

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/slipstream-sync/slipstream/internal/testredis"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// Issue 7's cluster groups: two instances of one cluster group share a
// Redis for dedup (dedup store = "redis"). A client sends every message to
// both; a receiver connected to both gets each message once. With Redis
// down, nothing is lost (duplicates are allowed then).

// clusterHCL is the default pipeline of instance id of cluster group cg,
// deduplicating through the Redis at redisURL.
func clusterHCL(id, cg, dir, redisURL string) string {
	hcl := replaceOnce(defaultPipelineHCL(id, dir, ""), "instance {\n", fmt.Sprintf("instance {\n  cluster_group = %q\n", cg))
	return replaceOnce(hcl, `window = "1h"`, fmt.Sprintf("window    = \"1h\"\n    store     = \"redis\"\n    redis_url = %q", redisURL))
}

// sendToBoth publishes k SKs with ids <prefix>-NNN to both instances at
// once, through one connection to each, and waits for both ACKs of each.
func sendToBoth(t *testing.T, a, b *meshClient, prefix string, k int) []string {
	t.Helper()
	ids := make([]string, k)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%03d", prefix, i)
	}
	var wg sync.WaitGroup
	for _, c := range []*meshClient{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, id := range ids {
				if err := c.write([]byte(sk(id, "cluster:key", fmt.Sprint(i)))); err != nil {
					t.Errorf("publish to %s: %v", c.id, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	a.waitAcked(t, ids)
	b.waitAcked(t, ids)
	return ids
}

// receivedBy merges the deliveries of a receiver's two connections.
func receivedBy(cs ...*meshClient) map[string]int {
	total := map[string]int{}
	for _, c := range cs {
		counts, _ := c.deliveries()
		for id, n := range counts {
			total[id] += n
		}
	}
	return total
}

// waitReceived waits until the receiver's connections got every id.
func waitReceived(t *testing.T, ids []string, cs ...*meshClient) {
	t.Helper()
	testutil.CheckFor(t, 15*time.Second, 10*time.Millisecond, func() error {
		got := receivedBy(cs...)
		for _, id := range ids {
			if got[id] == 0 {
				return fmt.Errorf("%s not received", id)
			}
		}
		return nil
	})
}

func TestClusterGroupSharedDedup(t *testing.T) {
	srv := testredis.Start(t)
	dir := t.TempDir()
	a := startInstance(t, clusterHCL("edge-a", "edge", filepath.Join(dir, "a"), srv.URL()))
	b := startInstance(t, clusterHCL("edge-b", "edge", filepath.Join(dir, "b"), srv.URL()))
	// The receiver is connected to both instances (one durable link on
	// each); so is the sender.
	rxA, rxB := newMeshClient(t, a, "receiver"), newMeshClient(t, b, "receiver")
	txA, txB := newMeshClient(t, a, "sender"), newMeshClient(t, b, "sender")

	ids := sendToBoth(t, txA, txB, "m", 200)
	waitReceived(t, ids, rxA, rxB)
	settle := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(settle) {
		for id, n := range receivedBy(rxA, rxB) {
			if n != 1 {
				t.Fatalf("the receiver got %s %d times, want once", id, n)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	fromA, _ := rxA.deliveries()
	fromB, _ := rxB.deliveries()
	t.Logf("200 messages sent to both: %d delivered by edge-a, %d by edge-b, each once", len(fromA), len(fromB))

	// Redis down: every message still arrives (at least once); count the
	// duplicates the cluster group could not remove.
	srv.Stop()
	down := sendToBoth(t, txA, txB, "down", 50)
	waitReceived(t, down, rxA, rxB)
	dups := 0
	for _, id := range down {
		dups += receivedBy(rxA, rxB)[id] - 1
	}
	t.Logf("with Redis down: 50 messages, all received, %d duplicates", dups)
	for _, in := range []*testInstance{a, b} {
		if n := faultCounter(t, &faultInstance{testInstance: in}, "slipstream_dedup_redis_total",
			map[string]string{"op": "claim", "outcome": "unavailable"}); n == 0 {
			t.Fatal("no claim counted unavailable while Redis was down")
		}
	}
}
