package sinks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/testredis"
	"github.com/slipstream-sync/slipstream/internal/testutil"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// redisHarness is a redis sink built through its kind on a real Badger
// store, mirroring into a real redis-server.
type redisHarness struct {
	t    *testing.T
	st   *store.Store
	sink *Redis
	reg  *prometheus.Registry
}

func newRedisHarness(t *testing.T, url string) *redisHarness {
	t.Helper()
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h := &redisHarness{t: t, st: st, reg: prometheus.NewRegistry()}
	if h.sink, err = startRedisSink(st, url, h.reg); err != nil {
		st.Close()
		t.Fatal(err)
	}
	return h
}

// startRedisSink builds a redis sink through its kind over st, with short
// backoffs and a 1h tombstone TTL, and starts it.
func startRedisSink(st *store.Store, url string, reg *prometheus.Registry) (*Redis, error) {
	kind, ok := pipeline.Lookup(pipeline.ClassSink, "redis")
	if !ok {
		return nil, errors.New("redis sink kind not registered")
	}
	cfg := kind.NewConfig().(*RedisConfig)
	cfg.URL = url
	part, err := kind.Build(cfg, &pipeline.BuildContext{Name: "redis.mirror", Store: st,
		Logger: slog.New(slog.DiscardHandler), Metrics: reg})
	if err != nil {
		return nil, err
	}
	r := part.(*Redis)
	r.backoffMin, r.backoffMax = 20*time.Millisecond, 200*time.Millisecond
	r.MirrorState(time.Hour)
	if err := r.Start(context.Background()); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func (h *redisHarness) close() {
	h.sink.Close()
	h.st.Close()
}

// set commits the state record of an SK/SA/SW (as persist does, last writer
// wins) and hands its envelope to the sink (as fanout does).
func (h *redisHarness) set(typ slipstream.Type, key, value string, ts int64, id string) {
	h.t.Helper()
	h.setAs(pipeline.Accepted, typ, key, value, ts, id)
}

// setAs is set with the envelope's final status; a Duplicate is one that
// persist committed and then found claimed by another instance of its
// cluster group (Seqs set).
func (h *redisHarness) setAs(status pipeline.Status, typ slipstream.Type, key, value string, ts int64, id string) {
	h.t.Helper()
	m := &slipstream.Message{Type: typ, Key: key, Value: []byte(value), Timestamp: ts, OriginInstanceID: "o1", MessageID: id}
	rec := &store.StateRecord{Type: string(typ), Timestamp: ts, Origin: "o1", MessageID: id, Value: m.Value}
	if typ == slipstream.TypeSK && value == "null" {
		rec.Deleted, rec.Value = true, nil
	}
	err := h.st.DB().Update(func(txn *badger.Txn) error {
		cur, err := store.ReadState(txn, key)
		if err != nil || !rec.Newer(cur) {
			return err
		}
		b, _ := rec.MarshalBinary()
		return txn.Set(store.StateKey(key), b)
	})
	if err != nil {
		h.t.Fatal(err)
	}
	e := &pipeline.Envelope{Msg: m, Status: status}
	if status == pipeline.Duplicate {
		e.Seqs = []uint64{}
	}
	if err := h.sink.Deliver(context.Background(), []*pipeline.Envelope{e}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *redisHarness) flush() {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.sink.Flush(ctx); err != nil {
		h.t.Fatal(err)
	}
}

// dumpRedis renders what Redis holds for key (prefix "slipstream:"): its
// type and contents, read with GET, LRANGE and ZRANGE WITHSCORES.
func dumpRedis(ctx context.Context, c *redis.Client, key string) (string, error) {
	k := "slipstream:" + key
	typ, err := c.Type(ctx, k).Result()
	if err != nil {
		return "", err
	}
	switch typ {
	case "none":
		return "none", nil
	case "string":
		v, err := c.Get(ctx, k).Result()
		return "string " + v, err
	case "list":
		v, err := c.LRange(ctx, k, 0, -1).Result()
		return "list " + strings.Join(v, " "), err
	case "zset":
		v, err := c.ZRangeWithScores(ctx, k, 0, -1).Result()
		parts := make([]string, len(v))
		for i, z := range v {
			parts[i] = fmt.Sprintf("%v=%v", z.Member, z.Score)
		}
		return "zset " + strings.Join(parts, " "), err
	}
	return "", fmt.Errorf("unexpected type %s", typ)
}

func expectRedis(t *testing.T, c *redis.Client, want map[string]string) {
	t.Helper()
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for k, w := range want {
			got, err := dumpRedis(context.Background(), c, k)
			if err != nil {
				return err
			}
			if got != w {
				return fmt.Errorf("%s: %q, want %q", k, got, w)
			}
		}
		return nil
	})
}

// SK, SA, SW and deletes map to a string, a list, a sorted set and DEL; a
// later write of another type replaces the key; a delete keeps the version
// with the tombstone TTL.
func TestRedisSinkMirrorsState(t *testing.T) {
	srv := testredis.Start(t)
	c := srv.Client()
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), testredis.IgnoreLeaks())
	h := newRedisHarness(t, srv.URL())
	defer h.close()

	h.set(slipstream.TypeSK, "user:1", `{"name":"ada"}`, 100, "m1")
	h.set(slipstream.TypeSA, "list", `["a", {"b":1}, 3]`, 100, "m2")
	h.set(slipstream.TypeSW, "weights", `{"x":70,"y":30.5}`, 100, "m3")
	h.set(slipstream.TypeSK, "gone", `1`, 100, "m4")
	h.set(slipstream.TypeSK, "gone", `null`, 101, "m5")
	h.set(slipstream.TypeSK, "retyped", `"s"`, 100, "m6")
	h.set(slipstream.TypeSA, "retyped", `[1,2]`, 101, "m7")
	h.setAs(pipeline.Duplicate, slipstream.TypeSK, "claimed-elsewhere", `true`, 100, "m8")
	h.flush()
	expectRedis(t, c, map[string]string{
		"user:1":  `string {"name":"ada"}`,
		"list":    `list "a" {"b":1} 3`,
		"weights": "zset y=30.5 x=70",
		"gone":    "none",
		"retyped": "list 1 2",
		// committed, then a duplicate in its cluster group: its state changed
		"claimed-elsewhere": "string true",
	})
	ctx := context.Background()
	v, err := c.HGetAll(ctx, "slipstream:v:gone").Result()
	if err != nil || v["m"] != "m5" || v["o"] != "o1" {
		t.Fatalf("version of the deleted key: %v %v", v, err)
	}
	if ttl := c.PTTL(ctx, "slipstream:v:gone").Val(); ttl <= 0 || ttl > time.Hour {
		t.Fatalf("version of the deleted key has TTL %s, want the tombstone TTL (1h)", ttl)
	}
	if ttl := c.PTTL(ctx, "slipstream:v:user:1").Val(); ttl != -1 {
		t.Fatalf("version of a live key has TTL %s, want none", ttl)
	}
	if got := metricValue(h.sink.m.writes.WithLabelValues("mirror", "applied")); got < 5 {
		t.Fatalf("applied writes %v, want at least 5 (one per key)", got)
	}
}

// An older version never replaces a newer one, whatever the order in which
// they reach Redis: an instance whose store holds an older record (or a
// late retry) leaves Redis as it is, and equal versions are no-ops.
func TestRedisSinkIgnoresOlderVersions(t *testing.T) {
	srv := testredis.Start(t)
	c := srv.Client()
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), testredis.IgnoreLeaks())
	newer := newRedisHarness(t, srv.URL())
	defer newer.close()
	newer.set(slipstream.TypeSK, "k", `"new"`, 200, "m2")
	newer.set(slipstream.TypeSK, "tie", `"b"`, 100, "m-b")
	newer.set(slipstream.TypeSK, "dead", `null`, 300, "m9")
	newer.flush()

	// A second sink whose store holds older writes of the same keys
	// resyncs into the same Redis at its start.
	older := newRedisHarness(t, srv.URL())
	defer older.close()
	older.set(slipstream.TypeSK, "k", `"old"`, 100, "m1")
	older.set(slipstream.TypeSK, "tie", `"a"`, 100, "m-a") // same timestamp and origin: messageId decides
	older.set(slipstream.TypeSA, "dead", `[1]`, 299, "m8") // cannot resurrect the deleted key
	older.flush()
	expectRedis(t, c, map[string]string{"k": `string "new"`, "tie": `string "b"`, "dead": "none"})
	if got := metricValue(older.sink.m.writes.WithLabelValues("mirror", "stale")); got < 3 {
		t.Fatalf("stale writes %v, want at least 3", got)
	}
	// Applying the same record again changes nothing.
	before := metricValue(newer.sink.m.writes.WithLabelValues("mirror", "applied"))
	newer.set(slipstream.TypeSK, "k", `"new"`, 200, "m2")
	newer.flush()
	if after := metricValue(newer.sink.m.writes.WithLabelValues("mirror", "applied")); after != before {
		t.Fatalf("re-applying an equal version wrote again (%v -> %v)", before, after)
	}
	expectRedis(t, c, map[string]string{"k": `string "new"`})
}

// A reader never sees a list or sorted set half replaced.
func TestRedisSinkReplacesAtomically(t *testing.T) {
	srv := testredis.Start(t)
	c := srv.Client()
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), testredis.IgnoreLeaks())
	h := newRedisHarness(t, srv.URL())
	defer h.close()
	long, short := make([]string, 200), make([]string, 50)
	for i := range long {
		long[i] = fmt.Sprintf(`"l%d"`, i)
	}
	for i := range short {
		short[i] = fmt.Sprintf(`"s%d"`, i)
	}
	valid := map[string]bool{strings.Join(long, " "): true, strings.Join(short, " "): true}
	h.set(slipstream.TypeSA, "arr", "["+strings.Join(long, ",")+"]", 1, "m0000")
	h.flush()

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var readErr error
	reads := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil && reads < 100000 {
			v, err := c.LRange(ctx, "slipstream:arr", 0, -1).Result()
			if err != nil {
				if ctx.Err() == nil {
					readErr = err
				}
				return
			}
			if got := strings.Join(v, " "); !valid[got] {
				readErr = fmt.Errorf("a reader saw a partial list of %d elements", len(v))
				return
			}
			reads++
		}
	}()
	for i := 1; i <= 200; i++ {
		elems := long
		if i%2 == 1 {
			elems = short
		}
		h.set(slipstream.TypeSA, "arr", "["+strings.Join(elems, ",")+"]", int64(1+i), fmt.Sprintf("m%04d", i))
		if i%20 == 0 {
			h.flush()
		}
	}
	h.flush()
	cancel()
	wg.Wait()
	if readErr != nil {
		t.Fatal(readErr)
	}
	if reads == 0 {
		t.Fatal("the reader read nothing")
	}
	expectRedis(t, c, map[string]string{"arr": "list " + strings.Join(long, " ")})
}

// Redis killed: writes go on (into the store), the sink reports the outage;
// Redis restarted empty on the same port: the sink resyncs and Redis holds
// everything, including what was mirrored before the outage.
func TestRedisSinkResyncsAfterRedisRestart(t *testing.T) {
	srv := testredis.Start(t)
	c := srv.Client()
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), testredis.IgnoreLeaks())
	h := newRedisHarness(t, srv.URL())
	defer h.close()
	want := map[string]string{}
	for i := range 20 {
		h.set(slipstream.TypeSK, fmt.Sprintf("before:%d", i), fmt.Sprint(i), 10, fmt.Sprintf("b%d", i))
		want[fmt.Sprintf("before:%d", i)] = fmt.Sprintf("string %d", i)
	}
	h.flush()
	expectRedis(t, c, want)

	srv.Stop()
	for i := range 30 {
		key := fmt.Sprintf("during:%d", i%10)
		h.set(slipstream.TypeSA, key, fmt.Sprintf("[%d]", i), int64(20+i), fmt.Sprintf("d%d", i))
		want[key] = fmt.Sprintf("list %d", i)
	}
	h.set(slipstream.TypeSK, "before:0", "null", 99, "del0")
	want["before:0"] = "none"
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if metricValue(h.sink.m.connected) != 0 {
			return errors.New("the sink still reports connected while Redis is down")
		}
		if metricValue(h.sink.m.pending) == 0 {
			return errors.New("no keys reported waiting")
		}
		return nil
	})

	srv.Restart()
	expectRedis(t, c, want)
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if metricValue(h.sink.m.connected) != 1 {
			return errors.New("the sink does not report connected after Redis came back")
		}
		return nil
	})
	if metricValue(h.sink.m.writes.WithLabelValues("mirror", "error")) == 0 {
		t.Fatal("no failed attempt counted during the outage")
	}

	// A restart while idle (nothing written) is noticed too.
	srv.Stop()
	srv.Restart()
	expectRedis(t, c, want)
}

func TestRedisSinkConfig(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"", `url: required`},
		{"http://127.0.0.1:6379", "url: redis: invalid URL scheme"},
		{"redis://127.0.0.1:6379/x", "url: redis: invalid database number"},
	} {
		err := (&RedisConfig{URL: tc.url}).Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("url %q: %v, want %q...", tc.url, err, tc.want)
		}
	}
	for _, ok := range []string{"redis://127.0.0.1:6379/0", "rediss://user:pw@example.com:6380/2"} {
		if err := (&RedisConfig{URL: ok}).Validate(); err != nil {
			t.Errorf("url %q: %v", ok, err)
		}
	}
}

// metricValue reads a counter's or gauge's value.
func metricValue(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		return -1
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

// A sink that starts over a store holding state it never saw delivered (an
// instance restarted after a crash, or a sink added to a running
// environment) brings Redis up to date at once.
func TestRedisSinkResyncsAtStart(t *testing.T) {
	srv := testredis.Start(t)
	c := srv.Client()
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), testredis.IgnoreLeaks())
	h := newRedisHarness(t, srv.URL())
	defer h.close()
	h.sink.Close() // "crash": the writes below are committed but never delivered to a sink
	want := map[string]string{}
	for i := range 600 { // more than one resync page
		key := fmt.Sprintf("k%03d", i)
		h.setAs(pipeline.Rejected, slipstream.TypeSK, key, fmt.Sprint(i), 1, "m"+key)
		want[key] = fmt.Sprintf("string %d", i)
	}
	restarted, err := startRedisSink(h.st, srv.URL(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer restarted.Close()
	expectRedis(t, c, want)
}
