package stages

import (
	"strings"
	"testing"
	"time"

	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// dedup marks a data message whose (clusterGroupId, messageId) marker is in
// the store, or that repeats an earlier message of its batch, as Duplicate
// (routing step 3). It only reads: persist writes the markers.
func TestDedup(t *testing.T) {
	h := newHarness(t)
	st := h.stage(`stage "dedup" { window = "1h" }`)
	h.putMarker(cluster, "stored", time.Hour)
	h.putMarker(cluster, "no-ttl", 0)
	h.putMarker("cluster-2", "other-group", time.Hour)
	h.putExpiredMarker(cluster, "expired")

	data := func(id, clusterID string) func(*testing.T) *pipeline.Envelope {
		return func(t *testing.T) *pipeline.Envelope {
			return decoded(t, peer("aws-1"), sk(id, clusterID, "aws-1", selfID))
		}
	}
	with := func(s pipeline.Status, mk func(*testing.T) *pipeline.Envelope) func(*testing.T) *pipeline.Envelope {
		return func(t *testing.T) *pipeline.Envelope { return withStatus(mk(t), s) }
	}
	raw := func(s string) func(*testing.T) *pipeline.Envelope {
		return func(t *testing.T) *pipeline.Envelope { return decoded(t, peer("aws-1"), s) }
	}
	tests := []struct {
		name  string
		batch []func(*testing.T) *pipeline.Envelope
		want  []pipeline.Status
	}{
		{"new message", []func(*testing.T) *pipeline.Envelope{data("new", cluster)},
			[]pipeline.Status{pipeline.Accepted}},
		{"marker in the store", []func(*testing.T) *pipeline.Envelope{data("stored", cluster)},
			[]pipeline.Status{pipeline.Duplicate}},
		{"marker without TTL", []func(*testing.T) *pipeline.Envelope{data("no-ttl", cluster)},
			[]pipeline.Status{pipeline.Duplicate}},
		{"expired marker: the window has passed", []func(*testing.T) *pipeline.Envelope{data("expired", cluster)},
			[]pipeline.Status{pipeline.Accepted}},
		{"two copies in one batch: the second is the duplicate",
			[]func(*testing.T) *pipeline.Envelope{data("twice", cluster), data("other", cluster), data("twice", cluster)},
			[]pipeline.Status{pipeline.Accepted, pipeline.Accepted, pipeline.Duplicate}},
		{"three copies in one batch",
			[]func(*testing.T) *pipeline.Envelope{data("thrice", cluster), data("thrice", cluster), data("thrice", cluster)},
			[]pipeline.Status{pipeline.Accepted, pipeline.Duplicate, pipeline.Duplicate}},
		{"same id in another cluster group is another message",
			[]func(*testing.T) *pipeline.Envelope{data("shared", cluster), data("shared", "cluster-2")},
			[]pipeline.Status{pipeline.Accepted, pipeline.Accepted}},
		{"marker of another cluster group does not match",
			[]func(*testing.T) *pipeline.Envelope{data("other-group", cluster), data("other-group", "cluster-2")},
			[]pipeline.Status{pipeline.Accepted, pipeline.Duplicate}},
		{"cluster/id boundary is unambiguous",
			[]func(*testing.T) *pipeline.Envelope{data("bc", "a"), data("c", "ab")},
			[]pipeline.Status{pipeline.Accepted, pipeline.Accepted}},
		{"CMD is deduplicated like SK",
			[]func(*testing.T) *pipeline.Envelope{raw(`{"type":"CMD","messageId":"stored","clusterGroupId":"cg","command":"app.x"}`)},
			[]pipeline.Status{pipeline.Duplicate}},
		{"rejected, loop and consumed envelopes are untouched", []func(*testing.T) *pipeline.Envelope{
			with(pipeline.Rejected, data("stored", cluster)),
			with(pipeline.Loop, data("stored", cluster)),
			with(pipeline.Consumed, data("stored", cluster))},
			[]pipeline.Status{pipeline.Rejected, pipeline.Loop, pipeline.Consumed}},
		{"a copy after a rejected one is not a duplicate of it", []func(*testing.T) *pipeline.Envelope{
			with(pipeline.Rejected, data("r", cluster)), data("r", cluster)},
			[]pipeline.Status{pipeline.Rejected, pipeline.Accepted}},
		{"ACK, ERR, requests and replies with a stored id pass", []func(*testing.T) *pipeline.Envelope{
			raw(`{"type":"ACK","messageId":"stored","clusterGroupId":"cg"}`),
			raw(`{"type":"ERR","messageId":"stored","code":"invalid"}`),
			raw(`{"type":"GK","messageId":"stored","clusterGroupId":"cg","key":"k"}`),
			raw(`{"type":"CMD","messageId":"stored","clusterGroupId":"cg","inReplyTo":"c","result":1}`)},
			[]pipeline.Status{pipeline.Accepted, pipeline.Accepted, pipeline.Accepted, pipeline.Accepted}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			batch := make([]*pipeline.Envelope, len(tc.batch))
			for i, mk := range tc.batch {
				batch[i] = mk(t)
			}
			out := process(t, st, batch...)
			if len(out) != len(batch) {
				t.Fatalf("Process returned %d envelopes, want all %d", len(out), len(batch))
			}
			for i := range out {
				if out[i] != batch[i] {
					t.Fatalf("envelope %d replaced or reordered", i)
				}
			}
			if got := statuses(out); !equalStatuses(got, tc.want) {
				t.Errorf("statuses = %v, want %v", got, tc.want)
			}
			for _, e := range batch {
				if r := e.From.(*fakeOrigin).Replies(); len(r) != 0 {
					t.Errorf("dedup replied %v; duplicates are ACKed by the ack stage", r)
				}
			}
		})
	}

	t.Run("batches do not remember each other; the stored marker does", func(t *testing.T) {
		a := decoded(t, peer("aws-1"), sk("later", cluster))
		b := decoded(t, peer("aws-1"), sk("later", cluster))
		process(t, st, a)
		process(t, st, b)
		if a.Status != pipeline.Accepted || b.Status != pipeline.Accepted {
			t.Errorf("statuses %v, %v; without a marker (persist writes it) the next batch is not a duplicate", a.Status, b.Status)
		}
		if found, _ := h.marker(cluster, "later"); found {
			t.Errorf("dedup wrote a marker; only persist may, in the message's transaction")
		}
	})
}

func TestDedupConfig(t *testing.T) {
	tests := []struct{ name, hcl, wantErr string }{
		{"default", `stage "dedup" {}`, ""},
		{"one hour", `stage "dedup" { window = "1h" }`, ""},
		{"one second", `stage "dedup" { window = "1s" }`, ""},
		{"under a second", "stage \"dedup\" {\n  window = \"500ms\"\n}", `test.hcl:2:12: Invalid value for "window"; must be at least 1s`},
		{"zero", "stage \"dedup\" {\n  window = \"0s\"\n}", `test.hcl:2:12: Invalid value for "window"; must be at least 1s`},
		{"negative", "stage \"dedup\" {\n  window = \"-1h\"\n}", `test.hcl:2:12: Invalid value for "window"`},
		{"not a duration", "stage \"dedup\" {\n  window = \"a day\"\n}", `test.hcl:2:12:`},
		{"a number", "stage \"dedup\" {\n  window = 3600\n}", `test.hcl:2:12:`},
		{"badger store", `stage "dedup" { store = "badger" }`, ""},
		{"redis store", "stage \"dedup\" {\n  store     = \"redis\"\n  redis_url = \"redis://127.0.0.1:6379/0\"\n}", ""},
		{"redis over TLS", "stage \"dedup\" {\n  store     = \"redis\"\n  redis_url = \"rediss://u:p@redis.example.com:6380/1\"\n}", ""},
		{"unknown store", "stage \"dedup\" {\n  store = \"memcached\"\n}", `test.hcl:2:11: Invalid value for "store"; must be badger or redis, got "memcached"`},
		{"redis without url", "stage \"dedup\" {\n  store = \"redis\"\n}", `test.hcl:1:1: Invalid value for "redis_url"; required when store = "redis"`},
		{"bad url", "stage \"dedup\" {\n  store = \"redis\"\n  redis_url = \"http://x\"\n}", `test.hcl:3:15: Invalid value for "redis_url"; redis: invalid URL scheme: http; write redis://`},
		{"url without the redis store", "stage \"dedup\" {\n  redis_url = \"redis://127.0.0.1:6379/0\"\n}", `test.hcl:2:15: Invalid value for "redis_url"; only used with store = "redis"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := configDiags(t, tc.hcl)
			switch {
			case tc.wantErr == "" && got != "":
				t.Errorf("unexpected diagnostics:\n%s", got)
			case tc.wantErr != "" && !strings.HasPrefix(got, tc.wantErr):
				t.Errorf("diagnostics:\n%s\nwant one starting %q", got, tc.wantErr)
			}
		})
	}
	if cfg := stageConfig(t, `stage "dedup" { window = "90m" }`).(*DedupConfig); cfg.Window != 90*time.Minute {
		t.Errorf("window = %v, want 1h30m", cfg.Window)
	}
}

// dedup never waits for persist: while persist is at work on a batch, dedup
// only marks the repeats within its own batch and persist makes the store
// lookup (a copy of a stored message still ends up a duplicate, found by
// persist); when persist is idle, dedup looks up, in a snapshot that sees
// every commit persist completed.
func TestDedupLeavesLookupToBusyPersist(t *testing.T) {
	h := newHarness(t)
	h.bc.StageKinds = []string{"dedup", "persist"}
	dd := h.stage(`stage "dedup" { window = "1h" }`)
	ps := h.stage(`stage "persist" {}`)
	h.attach(link.Spec{ID: "aws-1", Tags: []string{"aws"}, Peer: true, Acks: true, Durable: true})
	clock := h.bc.StageConfigs["dedup"].(*DedupConfig).clock()
	copyOf := func(id string) *pipeline.Envelope { return routed(t, sk(id, cluster, selfID), "aws-1") }

	// Idle persist: dedup sees what persist committed, batch after batch
	// (its kept snapshot is renewed after each commit).
	for _, id := range []string{"a", "b", "c"} {
		e := copyOf(id)
		process(t, dd, e)
		process(t, ps, e)
		if e.Status != pipeline.Accepted {
			t.Fatalf("%s: %v, want accepted", id, e.Status)
		}
		dup := copyOf(id)
		if process(t, dd, dup); dup.Status != pipeline.Duplicate {
			t.Fatalf("copy of %s after its commit: dedup says %v, want duplicate", id, dup.Status)
		}
	}

	// Busy persist: dedup does not look up; persist does.
	clock.enter()
	old, again, twice := copyOf("a"), copyOf("new"), copyOf("new")
	process(t, dd, old, again, twice)
	if got := statuses([]*pipeline.Envelope{old, again, twice}); !equalStatuses(got, []pipeline.Status{pipeline.Accepted, pipeline.Accepted, pipeline.Duplicate}) {
		t.Errorf("dedup with persist busy: %v, want [accepted accepted duplicate] (no lookup; repeats in the batch marked)", got)
	}
	clock.leave()
	process(t, ps, old, again, twice)
	if old.Status != pipeline.Duplicate || again.Status != pipeline.Accepted {
		t.Errorf("persist: copy of a stored message %v, new message %v; want duplicate, accepted", old.Status, again.Status)
	}
}
