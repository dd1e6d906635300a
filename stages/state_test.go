package stages

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// stateHarness builds persist and state the way a pipeline holding both does
// (persist applies the writes, state answers gets).
func stateHarness(t testing.TB, stateHCL string) (*harness, pipeline.Stage, pipeline.Stage) {
	h := newHarness(t)
	h.bc.StageKinds = []string{"persist", "state"}
	st := h.stage(stateHCL)
	p := h.stage(`stage "persist" {}`)
	return h, p, st
}

func setMsg(typ, key, value string, ts int64, origin, id string, tags ...string) string {
	tt := ""
	if len(tags) > 0 {
		b, _ := json.Marshal(tags)
		tt = `"targetedTags":` + string(b) + `,`
	}
	return fmt.Sprintf(`{"type":%q,"messageId":%q,"originInstanceId":%q,"clusterGroupId":"cg","messagePath":[%q],%s"timestamp":%d,"key":%q,"value":%s}`,
		typ, id, origin, origin, tt, ts, key, value)
}

func (h *harness) state(key string) *store.StateRecord {
	h.tb.Helper()
	r, err := h.store.State(key)
	if err != nil {
		h.tb.Fatalf("read state %q: %v", key, err)
	}
	return r
}

func TestStateLastWriterWins(t *testing.T) {
	h, persist, _ := stateHarness(t, `stage "state" {}`)
	from := peer("aws-1")
	steps := []struct {
		msg       string
		wantValue string // "" = deleted or absent
		wantBy    string
	}{
		{setMsg("SK", "k", `{"v":1}`, 100, "aws-1", "m1"), `{"v":1}`, "m1"},
		{setMsg("SK", "k", `{"v":0}`, 99, "zzz-1", "m0"), `{"v":1}`, "m1"},                  // older timestamp: ignored
		{setMsg("SK", "k", `{"v":2}`, 100, "azure-1", "m2"), `{"v":2}`, "m2"},               // same ts, greater origin wins
		{setMsg("SK", "k", `{"v":3}`, 100, "azure-1", "m10"), `{"v":2}`, "m2"},              // same ts and origin: "m10" < "m2"
		{setMsg("SA", "k", `[1,2]`, 101, "aws-1", "m3"), `[1,2]`, "m3"},                     // another type replaces
		{setMsg("SK", "k", `null`, 102, "aws-1", "m4"), "", "m4"},                           // delete: tombstone
		{setMsg("SW", "k", `{"a":1}`, 101, "gcp-1", "m5"), "", "m4"},                        // older than the delete: stays deleted
		{setMsg("SW", "k", `{"a":70,"b":30}`, 103, "gcp-1", "m6"), `{"a":70,"b":30}`, "m6"}, // newer: back
	}
	for i, s := range steps {
		process(t, persist, decoded(t, from, s.msg))
		r := h.state("k")
		if r == nil || r.MessageID != s.wantBy || string(r.Value) != s.wantValue || r.Deleted != (s.wantValue == "") {
			t.Fatalf("step %d: state = %+v, want value %q set by %s", i, r, s.wantValue, s.wantBy)
		}
	}
}

func TestStateTombstoneExpires(t *testing.T) {
	h, persist, _ := stateHarness(t, `stage "state" {
  tombstone_ttl = "90m"
}`)
	process(t, persist, decoded(t, peer("aws-1"), setMsg("SK", "k", `1`, 1, "aws-1", "m1")))
	process(t, persist, decoded(t, peer("aws-1"), setMsg("SK", "k", `null`, 2, "aws-1", "m2")))
	var expires uint64
	h.store.DB().View(func(txn *badgerTxn) error {
		it, err := txn.Get(store.StateKey("k"))
		if err == nil {
			expires = it.ExpiresAt()
		}
		return err
	})
	got := time.Until(time.Unix(int64(expires), 0))
	if got < 80*time.Minute || got > 91*time.Minute {
		t.Fatalf("tombstone expires in %v, want about 90m (tombstone_ttl)", got)
	}
	// A live value has no TTL.
	process(t, persist, decoded(t, peer("aws-1"), setMsg("SK", "k", `3`, 3, "aws-1", "m3")))
	h.store.DB().View(func(txn *badgerTxn) error {
		it, err := txn.Get(store.StateKey("k"))
		if err == nil && it.ExpiresAt() != 0 {
			t.Errorf("live value expires at %d, want never", it.ExpiresAt())
		}
		return err
	})
}

func TestStateNotTargetedHere(t *testing.T) {
	h, persist, _ := stateHarness(t, `stage "state" {}`)
	// The harness instance has tags ["local"].
	process(t, persist, decoded(t, peer("aws-1"), setMsg("SK", "away", `1`, 1, "aws-1", "m1", "azure")))
	process(t, persist, decoded(t, peer("aws-1"), setMsg("SK", "here", `1`, 1, "aws-1", "m2", "azure", "local")))
	if h.state("away") != nil || h.state("here") == nil {
		t.Fatalf("away=%+v here=%+v; want only the key targeted at this instance's tags", h.state("away"), h.state("here"))
	}
}

func TestStateAnswersGets(t *testing.T) {
	_, persist, st := stateHarness(t, `stage "state" {}`)
	for _, m := range []string{
		setMsg("SK", "order:1", `{"status":"paid"}`, 1, "aws-1", "s1"),
		setMsg("SA", "list", `["a","b"]`, 1, "aws-1", "s2"),
		setMsg("SW", "split", `{"acq-a":70,"acq-b":30}`, 1, "aws-1", "s3"),
		setMsg("SK", "gone", `1`, 1, "aws-1", "s4"),
		setMsg("SK", "gone", `null`, 2, "aws-1", "s5"),
	} {
		process(t, persist, decoded(t, peer("aws-1"), m))
	}
	tests := []struct {
		req       string
		wantFound bool
		wantValue string
		wantErr   string
	}{
		{`{"type":"GK","key":"order:1"}`, true, `{"status":"paid"}`, ""},
		{`{"type":"GA","key":"list"}`, true, `["a","b"]`, ""},
		{`{"type":"GW","key":"split"}`, true, `{"acq-a":70,"acq-b":30}`, ""},
		{`{"type":"GK","key":"list"}`, true, `["a","b"]`, ""}, // GK reads any key
		{`{"type":"GK","key":"missing"}`, false, "", ""},
		{`{"type":"GK","key":"gone"}`, false, "", ""},
		{`{"type":"GA","key":"order:1"}`, false, "", `key "order:1" was set by SK, not SA; read it with GK`},
		{`{"type":"GW","key":"list"}`, false, "", `key "list" was set by SA, not SW; read it with GA`},
	}
	for i, tc := range tests {
		from := client("pi-1")
		req := strings.Replace(tc.req, `{`, fmt.Sprintf(`{"messageId":"q%d","messagePath":[%q],`, i, selfID), 1)
		e := decoded(t, from, req)
		process(t, st, e)
		rs := from.Replies()
		if len(rs) != 1 {
			t.Fatalf("%s: %d replies, want 1", tc.req, len(rs))
		}
		r := rs[0]
		if r.Type != e.Msg.Type || r.InReplyTo != e.Msg.MessageID || r.MessageID == "" || r.MessageID == e.Msg.MessageID ||
			r.OriginInstanceID != selfID || r.Key != e.Msg.Key {
			t.Errorf("%s: reply %+v does not answer the request", tc.req, r)
		}
		if r.Found == nil || *r.Found != tc.wantFound || string(r.Value) != tc.wantValue || r.Error != tc.wantErr {
			t.Errorf("%s: found=%v value=%s error=%q; want %v %s %q", tc.req, r.Found, r.Value, r.Error, tc.wantFound, tc.wantValue, tc.wantErr)
		}
		// The reply is a valid protocol message.
		if _, err := slipstream.Decode(slipstream.Encode(r), nil); err != nil {
			t.Errorf("reply does not decode: %v", err)
		}
		if err := r.Validate(nil); err != nil {
			t.Errorf("reply invalid: %v", err)
		}
	}
	// Requests targeted elsewhere, duplicates and loops are not answered.
	for _, e := range []*pipeline.Envelope{
		decoded(t, client("pi-1"), `{"type":"GK","messageId":"x1","key":"order:1","targetedTags":["azure"]}`),
		withStatus(decoded(t, client("pi-1"), `{"type":"GK","messageId":"x2","key":"order:1"}`), pipeline.Loop),
	} {
		process(t, st, e)
		if rs := e.From.(*fakeOrigin).Replies(); len(rs) != 0 {
			t.Errorf("%s (status %v): answered %+v, want no answer", e.Raw, e.Status, rs)
		}
	}
}

// Convergence, the state's core promise: whatever order the same messages
// arrive in, and however they are split into batches, every instance ends
// with the same state, and it is the last-writer-wins choice per key.
func TestStateConvergesInAnyOrder(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d (rerun with SLIPSTREAM_SEED)", seed)
	if s := envSeed(t); s != 0 {
		seed = s
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	keys := []string{"a", "b", "c", "d"}
	origins := []string{"aws-1", "azure-1", "gcp-1"}
	var msgs []string
	for i := range 200 {
		key := keys[rng.IntN(len(keys))]
		ts := int64(1000 + rng.IntN(30)) // many equal timestamps: the tie-breaks matter
		origin := origins[rng.IntN(len(origins))]
		id := fmt.Sprintf("m%03d-%d", i, rng.IntN(1000))
		var m string
		switch rng.IntN(4) {
		case 0:
			m = setMsg("SK", key, fmt.Sprintf(`{"n":%d}`, i), ts, origin, id)
		case 1:
			m = setMsg("SK", key, `null`, ts, origin, id)
		case 2:
			m = setMsg("SA", key, fmt.Sprintf(`[%d,%d]`, i, rng.IntN(9)), ts, origin, id)
		default:
			m = setMsg("SW", key, fmt.Sprintf(`{"x":%d,"y":%d.5}`, i, rng.IntN(9)), ts, origin, id)
		}
		msgs = append(msgs, m)
	}
	// The expected state: the greatest (timestamp, origin, id) per key.
	want := map[string]*store.StateRecord{}
	for _, raw := range msgs {
		m, _ := slipstream.Decode([]byte(raw), nil)
		r := stateRecord(m)
		if r.Newer(want[m.Key]) {
			want[m.Key] = r
		}
	}
	for run := range 4 {
		order := slices.Clone(msgs)
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		h, persist, _ := stateHarness(t, `stage "state" {}`)
		for len(order) > 0 {
			n := min(len(order), 1+rng.IntN(20))
			var batch []*pipeline.Envelope
			for _, raw := range order[:n] {
				batch = append(batch, decoded(t, peer("aws-1"), raw))
			}
			process(t, persist, batch...)
			order = order[n:]
		}
		for _, k := range keys {
			got, w := h.state(k), want[k]
			if (got == nil) != (w == nil) || got != nil && (got.MessageID != w.MessageID || got.Deleted != w.Deleted || string(got.Value) != string(w.Value)) {
				t.Fatalf("seed %d run %d key %q: state %+v, want %+v", seed, run, k, got, w)
			}
		}
	}
}

type badgerTxn = badger.Txn

// envSeed returns SLIPSTREAM_SEED, or 0 when unset.
func envSeed(t testing.TB) uint64 {
	v := os.Getenv("SLIPSTREAM_SEED")
	if v == "" {
		return 0
	}
	s, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		t.Fatalf("SLIPSTREAM_SEED=%q: %v", v, err)
	}
	return s
}
