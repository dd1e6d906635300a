package stages

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/testredis"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// clusterNode is one instance of a cluster group: dedup with store =
// "redis" and persist, built as the daemon builds them, over its own store,
// with a connected peer link aws-1 as the recipient of everything.
type clusterNode struct {
	h       *harness
	dedup   pipeline.Stage
	persist pipeline.Stage
}

func newClusterNode(t *testing.T, id, redisURL string) *clusterNode {
	t.Helper()
	h := newHarness(t)
	h.bc.Instance.ID = id
	h.bc.StageKinds = []string{"dedup", "persist"}
	n := &clusterNode{h: h}
	n.dedup = h.stage(fmt.Sprintf("stage \"dedup\" {\n  window = \"1h\"\n  store = \"redis\"\n  redis_url = %q\n}", redisURL))
	t.Cleanup(func() { _ = n.dedup.(pipeline.Closer).Close() })
	n.persist = h.stage(`stage "persist" {}`)
	h.attach(link.Spec{ID: "aws-1", Tags: []string{"aws"}, Peer: true, Acks: true, Durable: true})
	return n
}

// send runs a copy of message id through dedup and then persist, and
// returns its final status.
func (n *clusterNode) send(t *testing.T, id string) pipeline.Status {
	t.Helper()
	e := routed(t, sk(id, cluster), "aws-1")
	process(t, n.dedup, e)
	process(t, n.persist, e)
	return e.Status
}

func (n *clusterNode) count(op, outcome string) float64 {
	mfs, _ := n.h.bc.Metrics.(*prometheus.Registry).Gather()
	for _, mf := range mfs {
		if mf.GetName() != "slipstream_dedup_redis_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labels(m) == "op="+op+",outcome="+outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func labels(m *dto.Metric) string {
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	return strings.Join(parts, ",")
}

// Two instances of one cluster group share a Redis: the first to commit a
// message claims it and keeps its delivery; the other ACKs its copy (a
// duplicate) and removes the delivery it had stored; a copy arriving after
// the claim is caught by dedup's early check.
func TestClusterDedupClaims(t *testing.T) {
	srv := testredis.Start(t)
	rc := srv.Client()
	a := newClusterNode(t, "node-a", srv.URL())
	b := newClusterNode(t, "node-b", srv.URL())

	if s := a.send(t, "m1"); s != pipeline.Accepted {
		t.Fatalf("first copy at node-a: %v, want accepted", s)
	}
	if got := rc.Get(context.Background(), claimKey(cluster, "m1")).Val(); got != "node-a" {
		t.Fatalf("claim of m1 held by %q, want node-a", got)
	}
	if ttl := rc.PTTL(context.Background(), claimKey(cluster, "m1")).Val(); ttl <= 0 || ttl > time.Hour {
		t.Fatalf("claim TTL %s, want the window (1h)", ttl)
	}
	if n := len(a.h.outbox("aws-1")); n != 1 {
		t.Fatalf("node-a outbox holds %d entries, want 1", n)
	}

	// node-b's copy passed its early check before node-a claimed (the
	// check is skipped here by running persist alone): the claim after its
	// commit finds node-a's, and its delivery is removed.
	e := routed(t, sk("m1", cluster), "aws-1")
	process(t, b.persist, e)
	if e.Status != pipeline.Duplicate {
		t.Fatalf("copy at node-b: %v, want duplicate (claimed by node-a)", e.Status)
	}
	if es := b.h.outbox("aws-1"); len(es) != 0 {
		t.Fatalf("node-b kept %d deliveries of a message node-a claimed", len(es))
	}
	if found, _ := b.h.marker(cluster, "m1"); !found {
		t.Fatal("node-b lost its local marker")
	}
	if b.count("claim", "theirs") != 1 {
		t.Fatalf("claim theirs = %v, want 1", b.count("claim", "theirs"))
	}

	// A copy arriving at node-b later is caught before persist.
	a.send(t, "m2")
	e = routed(t, sk("m2", cluster), "aws-1")
	process(t, b.dedup, e)
	if e.Status != pipeline.Duplicate || b.count("check", "theirs") != 1 {
		t.Fatalf("early check at node-b: %v (theirs %v), want duplicate", e.Status, b.count("check", "theirs"))
	}

	// A claim this instance holds (a retransmission after a restart that
	// lost nothing but the local marker's window) is its own.
	rc.Set(context.Background(), claimKey(cluster, "m3"), "node-b", time.Hour)
	if s := b.send(t, "m3"); s != pipeline.Accepted {
		t.Fatalf("copy of a message node-b claimed itself: %v, want accepted", s)
	}
	if b.count("claim", "ours") != 1 || len(b.h.outbox("aws-1")) != 1 {
		t.Fatalf("claim ours = %v, outbox %d; want 1 and 1", b.count("claim", "ours"), len(b.h.outbox("aws-1")))
	}

	// Redis down: local dedup only, nothing lost, nothing blocked for long.
	srv.Stop()
	for _, n := range []*clusterNode{a, b} {
		if s := n.send(t, "m4"); s != pipeline.Accepted {
			t.Fatalf("m4 with Redis down: %v, want accepted (at-least-once)", s)
		}
		if n.count("claim", "unavailable") == 0 {
			t.Fatal("no unavailable claim counted with Redis down")
		}
	}
	if s := a.send(t, "m4"); s != pipeline.Duplicate {
		t.Fatalf("second copy of m4 at node-a: %v, want duplicate (local marker)", s)
	}

	// Redis back: claims resume once the pause after the failure is over.
	srv.Restart()
	checkEventually(t, func() error {
		if s := a.send(t, fmt.Sprintf("m5-%d", time.Now().UnixNano())); s != pipeline.Accepted {
			return fmt.Errorf("status %v", s)
		}
		if a.count("claim", "new") < 3 {
			return fmt.Errorf("claims new = %v", a.count("claim", "new"))
		}
		return nil
	})
}

// checkEventually polls fn for up to 10s.
func checkEventually(t *testing.T, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mirrorSink is a sink that mirrors state (as the redis sink does).
type mirrorSink struct{ ttl time.Duration }

func (s *mirrorSink) Deliver(context.Context, []*pipeline.Envelope) error { return nil }
func (s *mirrorSink) MirrorState(ttl time.Duration)                       { s.ttl = ttl }

// A pipeline whose sink mirrors state needs a state stage; the sink learns
// its tombstone_ttl.
func TestPersistBindsStateMirrors(t *testing.T) {
	h := newHarness(t)
	sink := &mirrorSink{}
	h.bc.Sinks = []pipeline.Sink{sink}
	h.bc.StageKinds = []string{"persist", "ack", "fanout"}
	kind, cfg := h.config(`stage "persist" {}`)
	if _, err := kind.Build(cfg, h.bc); err == nil || !strings.Contains(err.Error(), `needs a state stage: add stage "state" {}`) {
		t.Fatalf("persist without a state stage but with a state mirror: %v", err)
	}
	h.bc.StageKinds = []string{"persist", "ack", "state", "fanout"}
	h.bc.StageConfigs["state"] = stageConfig(t, `stage "state" { tombstone_ttl = "2h" }`)
	if _, err := kind.Build(cfg, h.bc); err != nil {
		t.Fatal(err)
	}
	if sink.ttl != 2*time.Hour {
		t.Fatalf("mirror bound with TTL %s, want 2h", sink.ttl)
	}
}
