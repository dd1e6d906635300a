package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/slipstream-sync/slipstream/internal/daemon"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/testredis"
	"github.com/slipstream-sync/slipstream/internal/testutil"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// Issue 7's redis sink across a real triangle: each instance mirrors its
// state into its own redis-server; after a random workload the three Redis
// servers hold the same keys and values, equal to the instances' state.

// withRedisSink adds a redis sink mirroring into url to an instance config
// whose pipeline lists only the websocket sink.
func withRedisSink(hcl, url string) string {
	return replaceOnce(hcl, "sinks = [sink.websocket.links]", "sinks = [sink.websocket.links, sink.redis.mirror]") +
		fmt.Sprintf("\nsink \"redis\" \"mirror\" {\n  url = %q\n}\n", url)
}

// newRedisTriangle starts a triangle (each dials the next) whose instances
// mirror their state into one redis-server each.
func newRedisTriangle(t *testing.T) (*mesh, map[string]*testredis.Server) {
	t.Helper()
	m := &mesh{t: t, nodes: map[string]meshNode{}, ins: map[string]*testInstance{}, held: map[string]net.Listener{}}
	t.Cleanup(func() {
		for _, ln := range m.held {
			ln.Close()
		}
	})
	redises := map[string]*testredis.Server{}
	next := map[string]string{"aws-1": "azure-1", "azure-1": "gcp-1", "gcp-1": "aws-1"}
	for id, tags := range triangleTags {
		redises[id] = testredis.Start(t)
		ln := testutil.ReservePort(t)
		m.held[id] = ln
		m.nodes[id] = meshNode{id: id, tags: tags, port: ln.Addr().(*net.TCPAddr).Port,
			dir: filepath.Join(t.TempDir(), id), peers: []string{next[id]}}
	}
	for id := range m.nodes {
		m.held[id].Close()
		delete(m.held, id)
		m.ins[id] = startInstance(t, withRedisSink(meshHCL(m.nodes[id], m.nodes), redises[id].URL()))
	}
	m.triangle()
	return m, redises
}

// redisDump reads every key under "slipstream:" with GET, LRANGE, ZRANGE
// WITHSCORES and HGETALL (versions), rendered as text; the resync marker
// is left out.
func redisDump(ctx context.Context, c *redis.Client) (map[string]string, error) {
	out := map[string]string{}
	iter := c.Scan(ctx, 0, "slipstream:*", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		if k == "slipstream:synced" {
			continue
		}
		typ, err := c.Type(ctx, k).Result()
		if err != nil {
			return nil, err
		}
		var v string
		switch typ {
		case "string":
			v, err = c.Get(ctx, k).Result()
		case "list":
			var l []string
			l, err = c.LRange(ctx, k, 0, -1).Result()
			v = "list " + strings.Join(l, " | ")
		case "zset":
			var zs []redis.Z
			zs, err = c.ZRangeWithScores(ctx, k, 0, -1).Result()
			parts := make([]string, len(zs))
			for i, z := range zs {
				parts[i] = fmt.Sprintf("%v=%v", z.Member, z.Score)
			}
			v = "zset " + strings.Join(parts, " ")
		case "hash":
			var h map[string]string
			h, err = c.HGetAll(ctx, k).Result()
			v = fmt.Sprintf("version %s/%s/%s", h["t"], h["o"], h["m"])
		default:
			v = "type " + typ
		}
		if err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, iter.Err()
}

// stateInRedis renders the state records as the redis sink mirrors them:
// live keys with their values (without versions).
func stateInRedis(t *testing.T, es []store.StateEntry) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, e := range es {
		if e.Deleted {
			continue
		}
		k := "slipstream:" + e.Key
		switch e.Type {
		case "SK":
			out[k] = string(e.Value)
		case "SA":
			var elems []json.RawMessage
			if err := json.Unmarshal(e.Value, &elems); err != nil {
				t.Fatal(err)
			}
			if len(elems) == 0 {
				continue // Redis holds no empty list
			}
			s := make([]string, len(elems))
			for i, el := range elems {
				s[i] = string(el)
			}
			out[k] = "list " + strings.Join(s, " | ")
		case "SW":
			var w map[string]float64
			if err := json.Unmarshal(e.Value, &w); err != nil {
				t.Fatal(err)
			}
			members := make([]string, 0, len(w))
			for m := range w {
				members = append(members, m)
			}
			sort.Slice(members, func(i, j int) bool {
				if w[members[i]] != w[members[j]] {
					return w[members[i]] < w[members[j]]
				}
				return members[i] < members[j]
			})
			parts := make([]string, len(members))
			for i, m := range members {
				parts[i] = fmt.Sprintf("%v=%v", m, w[m])
			}
			out[k] = "zset " + strings.Join(parts, " ")
		}
	}
	return out
}

// Random SK/SA/SW/delete operations from clients of all three instances,
// with one Redis down for part of the workload: the three Redis servers end
// up holding identical keys, values and versions, and the values are the
// instances' state.
func TestRedisSinkTriangleMirrorsIdentically(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("SLIPSTREAM_SEED"); v != "" {
		seed, _ = strconv.ParseUint(v, 10, 64)
	}
	t.Logf("seed %d (rerun with SLIPSTREAM_SEED=%d)", seed, seed)
	m, redises := newRedisTriangle(t)
	ids := []string{"aws-1", "azure-1", "gcp-1"}
	clients := map[string]*meshClient{}
	for _, id := range ids {
		clients[id] = newMeshClient(t, m.ins[id], "app-"+id)
	}
	redises["azure-1"].Stop() // an outage during the workload

	keys := []string{"k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8"}
	const perClient = 120
	base := time.Now().UnixMilli()
	var wg sync.WaitGroup
	published := make([][]string, len(ids))
	for n, id := range ids {
		rng := rand.New(rand.NewPCG(seed, uint64(n)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perClient {
				key := keys[rng.IntN(len(keys))]
				mid := fmt.Sprintf("%s-%03d", id, i)
				ts := base + int64(rng.IntN(60))
				var frame string
				switch rng.IntN(5) {
				case 0:
					frame = fmt.Sprintf(`{"type":"SK","messageId":%q,"timestamp":%d,"key":%q,"value":{"by":%q,"i":%d}}`, mid, ts, key, id, i)
				case 1:
					frame = fmt.Sprintf(`{"type":"SK","messageId":%q,"timestamp":%d,"key":%q,"value":null}`, mid, ts, key)
				case 2:
					frame = fmt.Sprintf(`{"type":"SA","messageId":%q,"timestamp":%d,"key":%q,"value":[%q,%d,{"n":[1,2]}]}`, mid, ts, key, id, i)
				case 3:
					frame = fmt.Sprintf(`{"type":"SW","messageId":%q,"timestamp":%d,"key":%q,"value":{"a":%d,"b":0.5,%q:%d}}`, mid, ts, key, i, id, rng.IntN(100))
				default:
					frame = fmt.Sprintf(`{"type":"SK","messageId":%q,"timestamp":%d,"key":%q,"value":"text %d"}`, mid, ts, key, i)
				}
				if err := clients[id].write([]byte(frame)); err != nil {
					t.Errorf("%s: %v", id, err)
					return
				}
				published[n] = append(published[n], mid)
			}
		}()
	}
	wg.Wait()
	for n, id := range ids {
		clients[id].waitAcked(t, published[n])
	}
	redises["azure-1"].Restart()

	states := func(id string) []store.StateEntry {
		es, err := m.ins[id].Store().States("", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		return es
	}
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		a := states("aws-1")
		for _, id := range ids[1:] {
			if b := states(id); !reflect.DeepEqual(a, b) {
				return fmt.Errorf("the state of aws-1 and %s differ", id)
			}
		}
		return nil
	})
	want := stateInRedis(t, states("aws-1"))
	ctx := context.Background()
	var dumps map[string]map[string]string
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		dumps = map[string]map[string]string{}
		for _, id := range ids {
			d, err := redisDump(ctx, redises[id].Client())
			if err != nil {
				return fmt.Errorf("%s's Redis: %v", id, err)
			}
			dumps[id] = d
		}
		for _, id := range ids[1:] {
			if !reflect.DeepEqual(dumps["aws-1"], dumps[id]) {
				return fmt.Errorf("the Redis of aws-1 and %s differ:\n%s\n%s", id, describeDump(dumps["aws-1"]), describeDump(dumps[id]))
			}
		}
		values := map[string]string{}
		for k, v := range dumps["aws-1"] {
			if !strings.HasPrefix(k, "slipstream:v:") {
				values[k] = v
			}
		}
		if !reflect.DeepEqual(values, want) {
			return fmt.Errorf("Redis does not hold the state:\n%s\nwant\n%s", describeDump(values), describeDump(want))
		}
		return nil
	})
	versions := 0
	for k := range dumps["aws-1"] {
		if strings.HasPrefix(k, "slipstream:v:") {
			versions++
		}
	}
	if versions != len(states("aws-1")) {
		t.Fatalf("%d versions in Redis, want one per state record (%d)", versions, len(states("aws-1")))
	}
	t.Logf("%d keys mirrored identically (%d live)", versions, len(want))
}

func describeDump(d map[string]string) string {
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s = %s\n", k, d[k])
	}
	return b.String()
}

// A redis sink in a pipeline without a state stage is refused at build time
// with a message saying what to add.
func TestRedisSinkNeedsStateStage(t *testing.T) {
	hcl := withRedisSink(instanceHCL("solo-1", t.TempDir(), ""), "redis://127.0.0.1:1/0")
	cfg, diags := pipeline.Load("test.hcl", []byte(hcl))
	if diags.HasErrors() {
		t.Fatalf("config: %s", pipeline.FormatDiagnostics(diags))
	}
	in, err := daemon.New(cfg, daemon.Options{})
	if err == nil {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = in.Run(ctx, ctx)
		t.Fatal("an instance with a redis sink and no state stage was built")
	}
	if !strings.Contains(err.Error(), `needs a state stage: add stage "state" {}`) {
		t.Fatalf("error %q does not say to add a state stage", err)
	}
}
