package stages

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"go.opentelemetry.io/otel/propagation"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// persistHarness builds dedup (1h window) and persist as a pipeline would,
// so persist reads dedup's window from StageConfigs, and declares links:
// aws-1 (connected peer), gcp-1 (offline peer) and pi-1 (connected client).
func persistHarness(t *testing.T, dedup bool) (*harness, pipeline.Stage) {
	t.Helper()
	h := newHarness(t)
	if dedup {
		h.bc.StageKinds = []string{"dedup", "persist"}
		h.stage(`stage "dedup" { window = "1h" }`)
	} else {
		h.bc.StageKinds = []string{"persist"}
	}
	st := h.stage(`stage "persist" {}`)
	h.attach(link.Spec{ID: "aws-1", Tags: []string{"aws"}, Peer: true, Acks: true, Durable: true})
	h.ensure(link.Spec{ID: "gcp-1", Tags: []string{"gcp"}, Peer: true, Acks: true})
	h.attach(link.Spec{ID: "pi-1", Tags: []string{"local"}, Acks: true, Durable: true})
	return h, st
}

// routed is a decoded data envelope with its recipients chosen.
func routed(t testing.TB, raw string, recipients ...string) *pipeline.Envelope {
	e := decoded(t, client("pi-1"), raw)
	e.Recipients = recipients
	return e
}

// One data message: its dedup marker (TTL = dedup's window) and one outbox
// entry per recipient are in Badger, holding the message as forwarded:
// sourceInstanceId is this instance and every application field is intact,
// byte for byte.
func TestPersistStoresMessageMarkerAndOutboxes(t *testing.T) {
	h, st := persistHarness(t, true)
	const raw = `{"type":"SK","messageId":"m1","originInstanceId":"pi-1","sourceInstanceId":"pi-1","clusterGroupId":"cg",` +
		`"messagePath":["self-1"],"timestamp":1700000000000,"key":"order:1","value":{"status":"paid","amount":12.50},` +
		`"app":{"x":[1, 2,{"y":null}]},"note":"caf\u00e9","big":12345678901234567890}`
	e := routed(t, raw, "aws-1", "gcp-1")
	before := time.Now()

	out := process(t, st, e)

	if len(out) != 1 || out[0] != e || e.Status != pipeline.Accepted {
		t.Fatalf("got %d envelopes, status %v; want the message back, accepted", len(out), e.Status)
	}
	if !slices.Equal(e.Seqs, []uint64{1, 1}) {
		t.Errorf("seqs = %v, want [1 1] (first entry of each outbox)", e.Seqs)
	}
	fwd, err := slipstream.Decode(e.Encoded, nil)
	if err != nil {
		t.Fatalf("Encoded does not decode: %v\n%s", err, e.Encoded)
	}
	if fwd.SourceInstanceID != selfID || fwd.OriginInstanceID != "pi-1" || !slices.Equal(fwd.MessagePath, []string{selfID}) {
		t.Errorf("forwarded source %q origin %q path %v; want source %q, the rest unchanged",
			fwd.SourceInstanceID, fwd.OriginInstanceID, fwd.MessagePath, selfID)
	}
	for _, part := range []string{`"value":{"status":"paid","amount":12.50}`, `"app":{"x":[1, 2,{"y":null}]}`,
		`"note":"caf\u00e9"`, `"big":12345678901234567890`} {
		if !bytes.Contains(e.Encoded, []byte(part)) {
			t.Errorf("Encoded lost %s byte for byte:\n%s", part, e.Encoded)
		}
	}
	for _, id := range []string{"aws-1", "gcp-1"} {
		got := h.outbox(id)
		if len(got) != 1 || got[0].Seq != 1 || !bytes.Equal(got[0].Frame, e.Encoded) {
			t.Errorf("outbox of %s = %v, want one entry seq 1 holding Encoded", id, got)
		}
	}
	if got := h.outbox("pi-1"); len(got) != 0 {
		t.Errorf("outbox of pi-1 (not a recipient) = %v, want empty", got)
	}
	found, exp := h.marker(cluster, "m1")
	if !found {
		t.Fatalf("dedup marker not stored")
	}
	if lo, hi := before.Add(time.Hour-time.Minute), time.Now().Add(time.Hour+time.Minute); exp.Before(lo) || exp.After(hi) {
		t.Errorf("marker expires at %v, want about an hour from now (the dedup window)", exp)
	}
}

// A message with no recipients is still stored as seen (its marker), so a
// retransmission is a duplicate.
func TestPersistWithoutRecipients(t *testing.T) {
	h, st := persistHarness(t, true)
	e := routed(t, sk("lonely", cluster, selfID))
	e.Recipients = []string{}
	process(t, st, e)
	if e.Status != pipeline.Accepted || len(e.Seqs) != 0 || len(e.Encoded) == 0 {
		t.Errorf("status %v seqs %v encoded %d bytes; want accepted, no seqs, encoded", e.Status, e.Seqs, len(e.Encoded))
	}
	if found, _ := h.marker(cluster, "lonely"); !found {
		t.Errorf("marker not stored")
	}
	if k := h.keys("o/"); len(k) != 0 {
		t.Errorf("outbox keys %q, want none", k)
	}
}

// Seqs[i] is Recipients[i]'s outbox seq; each link's seqs ascend in message
// order across the batch and across batches.
func TestPersistSeqsAscendPerLink(t *testing.T) {
	h, st := persistHarness(t, true)
	m1 := routed(t, sk("m1", cluster, selfID), "aws-1", "gcp-1")
	m2 := routed(t, sk("m2", cluster, selfID), "gcp-1")
	m3 := routed(t, sk("m3", cluster, selfID), "gcp-1", "aws-1", "pi-1")
	process(t, st, m1, m2, m3)
	m4 := routed(t, sk("m4", cluster, selfID), "aws-1", "gcp-1")
	process(t, st, m4)

	wantSeqs := map[*pipeline.Envelope][]uint64{m1: {1, 1}, m2: {2}, m3: {3, 2, 1}, m4: {3, 4}}
	for e, want := range wantSeqs {
		if !slices.Equal(e.Seqs, want) {
			t.Errorf("%s: seqs %v for %v, want %v", e.Msg.MessageID, e.Seqs, e.Recipients, want)
		}
	}
	wantOrder := map[string][]*pipeline.Envelope{"aws-1": {m1, m3, m4}, "gcp-1": {m1, m2, m3, m4}, "pi-1": {m3}}
	for id, want := range wantOrder {
		got := h.outbox(id)
		if len(got) != len(want) {
			t.Fatalf("outbox of %s has %d entries, want %d", id, len(got), len(want))
		}
		for i, en := range got {
			if en.Seq != uint64(i+1) || !bytes.Equal(en.Frame, want[i].Encoded) {
				t.Errorf("outbox of %s entry %d: seq %d %s; want seq %d %s", id, i, en.Seq, en.Frame, i+1, want[i].Msg.MessageID)
			}
		}
	}
}

// persist repeats dedup's check inside its write transaction: a copy whose
// marker is already stored, or that repeats an earlier message of the batch,
// becomes a Duplicate and nothing of it is written.
func TestPersistDuplicates(t *testing.T) {
	tests := []struct {
		name        string
		stored      []string // ids whose marker is already in the store
		batch       []string // message ids, each to aws-1 and gcp-1
		want        []pipeline.Status
		wantEntries int // per link
	}{
		{"marker already stored", []string{"m1"}, []string{"m1"},
			[]pipeline.Status{pipeline.Duplicate}, 0},
		{"two copies in one batch", nil, []string{"m1", "m1"},
			[]pipeline.Status{pipeline.Accepted, pipeline.Duplicate}, 1},
		{"copies among others", nil, []string{"a", "b", "a", "c", "b"},
			[]pipeline.Status{pipeline.Accepted, pipeline.Accepted, pipeline.Duplicate, pipeline.Accepted, pipeline.Duplicate}, 3},
		{"stored one among new ones", []string{"old"}, []string{"new-1", "old", "new-2"},
			[]pipeline.Status{pipeline.Accepted, pipeline.Duplicate, pipeline.Accepted}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, st := persistHarness(t, true)
			for _, id := range tc.stored {
				h.putMarker(cluster, id, time.Hour)
			}
			batch := make([]*pipeline.Envelope, len(tc.batch))
			for i, id := range tc.batch {
				batch[i] = routed(t, sk(id, cluster, selfID), "aws-1", "gcp-1")
			}
			out := process(t, st, batch...)
			if got := statuses(out); !equalStatuses(got, tc.want) {
				t.Errorf("statuses = %v, want %v", got, tc.want)
			}
			for _, e := range out {
				if e.Status == pipeline.Duplicate && (e.Encoded != nil || e.Seqs != nil) {
					t.Errorf("duplicate %s got Encoded/Seqs; nothing of it is written", e.Msg.MessageID)
				}
			}
			for _, id := range []string{"aws-1", "gcp-1"} {
				got := h.outbox(id)
				if len(got) != tc.wantEntries {
					t.Errorf("outbox of %s has %d entries, want %d", id, len(got), tc.wantEntries)
				}
				for i, en := range got {
					if en.Seq != uint64(i+1) {
						t.Errorf("outbox of %s: entry %d has seq %d; a duplicate must not use up a seq", id, i, en.Seq)
					}
				}
			}
		})
	}
}

// Without a dedup stage there is no window: no marker is written and a
// retransmission is stored again (the receivers dedup).
func TestPersistWithoutDedupStage(t *testing.T) {
	h, st := persistHarness(t, false)
	a := routed(t, sk("m1", cluster, selfID), "aws-1")
	b := routed(t, sk("m1", cluster, selfID), "aws-1")
	process(t, st, a, b)
	if a.Status != pipeline.Accepted || b.Status != pipeline.Accepted {
		t.Errorf("statuses %v %v, want both accepted", a.Status, b.Status)
	}
	if k := h.keys("x/"); len(k) != 0 {
		t.Errorf("markers %q written without a dedup stage", k)
	}
	if got := h.outbox("aws-1"); len(got) != 2 {
		t.Errorf("outbox has %d entries, want 2", len(got))
	}
}

// Only data are stored: requests, control frames, replies and envelopes
// already decided pass through without a write.
func TestPersistStoresOnlyData(t *testing.T) {
	h, st := persistHarness(t, true)
	batch := []*pipeline.Envelope{
		routed(t, `{"type":"GK","messageId":"q1","clusterGroupId":"cg","key":"k"}`, "aws-1"),
		routed(t, `{"type":"ACK","messageId":"m1","clusterGroupId":"cg"}`, "aws-1"),
		routed(t, `{"type":"ERR","messageId":"m1","code":"invalid"}`, "aws-1"),
		routed(t, `{"type":"CMD","messageId":"r1","clusterGroupId":"cg","inReplyTo":"c1","result":{"ok":true}}`, "aws-1"),
		withStatus(routed(t, sk("dup", cluster, selfID), "aws-1"), pipeline.Duplicate),
		withStatus(routed(t, sk("loop", cluster, selfID), "aws-1"), pipeline.Loop),
		withStatus(routed(t, sk("bad", cluster, selfID), "aws-1"), pipeline.Rejected),
		withStatus(routed(t, sk("done", cluster, selfID), "aws-1"), pipeline.Consumed),
	}
	want := statuses(batch)
	out := process(t, st, batch...)
	if got := statuses(out); len(out) != len(batch) || !equalStatuses(got, want) {
		t.Errorf("statuses = %v, want unchanged %v", got, want)
	}
	for _, e := range out {
		if e.Encoded != nil || e.Seqs != nil {
			t.Errorf("%s %s (%v) got Encoded/Seqs", e.Msg.Type, e.Msg.MessageID, e.Status)
		}
	}
	if k := append(h.keys("x/"), h.keys("o/")...); len(k) != 0 {
		t.Errorf("stored keys %q, want none", k)
	}
}

// A recipient that left between tag_filter and persist (an ephemeral link
// that disconnected) gets no entry; its seq stays 0, which the websocket
// sink skips.
func TestPersistRecipientGone(t *testing.T) {
	h, st := persistHarness(t, true)
	e := routed(t, sk("m1", cluster, selfID), "aws-1", "con-gone", "gcp-1")
	process(t, st, e)
	if !slices.Equal(e.Seqs, []uint64{1, 0, 1}) {
		t.Errorf("seqs = %v, want [1 0 1]", e.Seqs)
	}
	if k := h.keys("o/con-gone"); len(k) != 0 {
		t.Errorf("entries for a link that is gone: %q", k)
	}
}

// The forwarded copy carries the trace context of the envelope, so the next
// instance's spans join the same trace.
func TestPersistCarriesTraceContext(t *testing.T) {
	_, st := persistHarness(t, true)
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	e := routed(t, sk("m1", cluster, selfID), "aws-1")
	e.Ctx = propagation.TraceContext{}.Extract(context.Background(),
		propagation.MapCarrier{"traceparent": tp, "tracestate": "vendor=abc"})
	plain := routed(t, sk("m2", cluster, selfID), "aws-1")
	process(t, st, e, plain)
	fwd, err := slipstream.Decode(e.Encoded, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fwd.TraceParent != tp || fwd.TraceState != "vendor=abc" {
		t.Errorf("forwarded traceparent %q tracestate %q, want %q and vendor=abc", fwd.TraceParent, fwd.TraceState, tp)
	}
	if bytes.Contains(plain.Encoded, []byte("traceparent")) {
		t.Errorf("a message without trace context got one: %s", plain.Encoded)
	}
}

// bigBatch makes n messages of about 300 bytes, each to every link of h.
func bigBatch(t testing.TB, n int, recipients []string) []*pipeline.Envelope {
	batch := make([]*pipeline.Envelope, n)
	for i := range batch {
		batch[i] = routed(t, fmt.Sprintf(`{"type":"SK","messageId":"msg-%06d","originInstanceId":"pi-1","clusterGroupId":"cg",`+
			`"messagePath":["self-1"],"timestamp":1700000000000,"key":"order:%06d","value":{"status":"paid","amount":129.5,`+
			`"currency":"EUR","items":[{"sku":"A-1","qty":1},{"sku":"B-2","qty":2}],"note":"%s"}}`, i, i, strings.Repeat("x", 80)),
			recipients...)
	}
	return batch
}

// A batch far larger than one Badger transaction (5,000 messages to four
// links: 25,000 entries of ~300 bytes) is split into several commits and
// fully stored.
func TestPersistLargeBatch(t *testing.T) {
	h, st := persistHarness(t, true)
	h.attach(link.Spec{ID: "azure-1", Peer: true, Durable: true})
	recipients := []string{"aws-1", "azure-1", "gcp-1", "pi-1"}
	const n = 5000
	batch := bigBatch(t, n, recipients)

	out := process(t, st, batch...)

	if len(out) != n {
		t.Fatalf("got %d envelopes, want %d", len(out), n)
	}
	for i, e := range out {
		if e.Status != pipeline.Accepted || !slices.Equal(e.Seqs, []uint64{uint64(i + 1), uint64(i + 1), uint64(i + 1), uint64(i + 1)}) {
			t.Fatalf("message %d: status %v seqs %v; want accepted, seq %d everywhere", i, e.Status, e.Seqs, i+1)
		}
		if found, _ := h.marker(cluster, e.Msg.MessageID); !found {
			t.Fatalf("message %d: marker missing", i)
		}
	}
	for _, id := range recipients {
		got := h.outbox(id)
		if len(got) != n {
			t.Fatalf("outbox of %s has %d entries, want %d", id, len(got), n)
		}
		for i, en := range got {
			if en.Seq != uint64(i+1) || !bytes.Equal(en.Frame, out[i].Encoded) {
				t.Fatalf("outbox of %s entry %d: seq %d, frame %.60s; want seq %d, message %d", id, i, en.Seq, en.Frame, i+1, i)
			}
		}
	}
}

// Splitting a large batch must keep each message whole in ONE commit (its
// marker written apart from its outbox entries breaks at-least-once: after a
// crash between the commits the retransmission is a "duplicate" and is ACKed
// while some recipients never get it), and must write nothing but the
// expected keys.
func TestPersistLargeBatchKeepsEachMessageInOneCommit(t *testing.T) {
	h, st := persistHarness(t, true)
	h.attach(link.Spec{ID: "azure-1", Peer: true, Durable: true})
	recipients := []string{"aws-1", "azure-1", "gcp-1", "pi-1"}
	const n = 5000
	process(t, st, bigBatch(t, n, recipients)...)

	// Every key the batch may write: one marker per message, one entry per
	// message and recipient.
	if got := len(h.keys("x/")); got != n {
		t.Errorf("%d keys under x/, want %d markers", got, n)
	}
	if got := len(h.keys("o/")); got != n*len(recipients) {
		t.Errorf("%d keys under o/, want %d outbox entries", got, n*len(recipients))
	}
	for _, k := range h.keys("o/") {
		if _, _, ok := store.SplitSeqKey([]byte(k)); !ok {
			t.Errorf("stray outbox key %q", k)
			break
		}
	}

	// Each message's keys were first written by one commit: the first
	// version of its marker is the first version of each of its entries.
	first := map[string]uint64{}
	err := h.store.DB().View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.AllVersions = true
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := string(it.Item().Key())
			if v := it.Item().Version(); first[k] == 0 || v < first[k] {
				first[k] = v
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	split := 0
	for i := range n {
		id := fmt.Sprintf("msg-%06d", i)
		mv := first[string(store.DedupKey(cluster, id))]
		for _, l := range recipients {
			if ev := first[string(store.OutboxKey(l, uint64(i+1)))]; ev != mv {
				split++
				if split <= 3 {
					t.Errorf("%s: marker committed at version %d, its entry for %s at %d", id, mv, l, ev)
				}
			}
		}
	}
	if split > 0 {
		t.Errorf("%d outbox entries were committed apart from their message's marker", split)
	}
}

// A store that cannot be written fails the whole batch: nothing of it is
// passed on, so nothing is acknowledged and the senders retransmit.
func TestPersistClosedStore(t *testing.T) {
	h, st := persistHarness(t, true)
	if err := h.store.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := st.Process(context.Background(), []*pipeline.Envelope{routed(t, sk("m1", cluster, selfID), "aws-1")})
	if err == nil {
		t.Fatalf("Process on a closed store returned %d envelopes and no error", len(out))
	}
	if out != nil {
		t.Errorf("a failed batch passed on %d envelopes", len(out))
	}
}

// With dedup configured, a marker committed by one batch makes the same
// message in the next batch a duplicate: the race between dedup (which read
// before the commit) and persist is closed here.
func TestPersistDuplicateAcrossBatches(t *testing.T) {
	h, st := persistHarness(t, true)
	a := routed(t, sk("m1", cluster, selfID), "aws-1")
	b := routed(t, sk("m1", cluster, selfID), "aws-1")
	process(t, st, a)
	process(t, st, b)
	if a.Status != pipeline.Accepted || b.Status != pipeline.Duplicate {
		t.Errorf("statuses %v %v, want accepted then duplicate", a.Status, b.Status)
	}
	if got := h.outbox("aws-1"); len(got) != 1 {
		t.Errorf("outbox has %d entries, want 1", len(got))
	}
}

// A message whose outbox entries for all its recipients cannot fit in one
// store transaction is refused with ERR too_large (it could never be
// stored: accepting none of it is the only whole outcome), and the other
// messages of its batch are stored as usual. It used to fail its whole
// batch, again at every retransmission.
func TestPersistRefusesMessageTooLargeForOneTransaction(t *testing.T) {
	h, st := persistHarness(t, true)
	many := make([]string, 3000)
	for i := range many {
		many[i] = fmt.Sprintf("sub-%04d", i)
		h.ensure(link.Spec{ID: many[i], Durable: true})
	}
	from := client("pi-1")
	big := decoded(t, from, `{"type":"SK","messageId":"big","key":"k","value":"`+strings.Repeat("v", 2000)+`"}`)
	big.Recipients = many
	small := routed(t, `{"type":"SK","messageId":"small","key":"k2","value":1}`, "aws-1", "pi-1")
	before := routed(t, `{"type":"SK","messageId":"before","key":"k3","value":1}`, "aws-1")

	out := process(t, st, before, big, small)

	if big.Status != pipeline.Rejected {
		t.Fatalf("the oversized message: status %v, want rejected", big.Status)
	}
	if len(from.replies) != 1 || from.replies[0].Code != slipstream.CodeTooLarge || from.replies[0].MessageID != "big" ||
		!strings.Contains(from.replies[0].Error, "memtable_size") {
		t.Fatalf("replies to the sender: %+v; want one ERR too_large for big naming memtable_size", from.replies)
	}
	if found, _ := h.marker(big.Msg.ClusterGroupID, "big"); found {
		t.Error("the refused message has a dedup marker: its retransmission would be ACKed as a duplicate")
	}
	if n := len(h.keys("o/sub-")); n != 0 {
		t.Errorf("%d outbox entries of the refused message were written", n)
	}
	for _, e := range []*pipeline.Envelope{before, small} {
		if e.Status != pipeline.Accepted {
			t.Errorf("%s: status %v, want accepted", e.Msg.MessageID, e.Status)
		}
		if found, _ := h.marker(e.Msg.ClusterGroupID, e.Msg.MessageID); !found {
			t.Errorf("%s: no dedup marker", e.Msg.MessageID)
		}
	}
	if got := len(h.outbox("aws-1")); got != 2 {
		t.Errorf("aws-1's outbox has %d entries, want 2", got)
	}
	if len(out) != 3 {
		t.Errorf("persist passed on %d envelopes, want 3", len(out))
	}
}

// txnCost is an upper bound of what Badger counts: the most recipients it
// lets a message have still fit in one transaction when written for real,
// whatever the message's size (under or over the value-log threshold) and
// the length of the link ids.
func TestTxnCostBoundsBadger(t *testing.T) {
	h := newHarness(t)
	db := h.store.DB()
	maxCount, maxSize := db.MaxBatchCount()*9/10, db.MaxBatchSize()*9/10
	threshold := db.Opts().ValueThreshold
	for _, size := range []int{100, 3000, int(threshold), 20000} {
		for _, idLen := range []int{4, 200} {
			e := &pipeline.Envelope{Msg: &slipstream.Message{Key: strings.Repeat("k", 100)}, Encoded: bytes.Repeat([]byte("v"), size)}
			marker := store.DedupKey("cluster", "01jf8zq4x5v3c9k2m7n6p8r0st")
			ids := make([]string, 20000)
			for i := range ids {
				ids[i] = fmt.Sprintf("%0*d", idLen, i)
			}
			fits := func(r int) bool {
				e.Recipients = ids[:r]
				n, sz := txnCost(e, len(marker), threshold)
				return n <= maxCount && sz <= maxSize
			}
			// The largest r that fits (fits(1) holds, fits(len(ids)) does not).
			lo, hi := 1, len(ids)
			if fits(hi) {
				t.Fatalf("%d recipients fit: raise the test's bound", hi)
			}
			for hi-lo > 1 {
				if mid := (lo + hi) / 2; fits(mid) {
					lo = mid
				} else {
					hi = mid
				}
			}
			r := lo
			fits(r)
			t.Logf("%d-byte message, %d-byte link ids: up to %d recipients", size, idLen, r)
			txn := db.NewTransaction(true)
			err := txn.SetEntry(badger.NewEntry(marker, nil).WithTTL(time.Hour))
			for i, id := range e.Recipients {
				if err == nil {
					err = txn.Set(store.OutboxKey(id, uint64(i+1)), e.Encoded)
				}
			}
			if err == nil {
				err = txn.Set(store.StateKey(e.Msg.Key), e.Encoded)
			}
			txn.Discard()
			if err != nil {
				t.Errorf("%d-byte message, %d-byte link ids: txnCost lets it have %d recipients, but Badger refuses them: %v", size, idLen, r, err)
			}
		}
	}
}
