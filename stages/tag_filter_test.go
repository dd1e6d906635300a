package stages

import (
	"slices"
	"testing"

	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// tag_filter chooses each data message's recipients (routing step 5): every
// known link, connected or not, except the sender, the origin and any
// instance already in messagePath, and with targetedTags only links carrying
// one of them.
func TestTagFilter(t *testing.T) {
	h := newHarness(t)
	st := h.stage(`stage "tag_filter" {}`)
	h.attach(link.Spec{ID: "aws-1", Tags: []string{"aws", "production"}, Peer: true, Acks: true, Durable: true})
	h.attach(link.Spec{ID: "azure-1", Tags: []string{"azure", "production"}, Peer: true, Acks: true, Durable: true})
	h.ensure(link.Spec{ID: "gcp-1", Tags: []string{"gcp", "staging"}, Peer: true, Acks: true}) // offline
	h.attach(link.Spec{ID: "pi-1", Tags: []string{"local"}, Acks: true, Durable: true})
	h.attach(link.Spec{ID: "con-0a1b", Tags: []string{"local"}, Acks: true}) // ephemeral client

	msg := func(origin string, path []string, tags ...string) string {
		m := `{"type":"SK","messageId":"m1","originInstanceId":"` + origin + `","clusterGroupId":"cg",` + pathJSON(path)
		if tags != nil {
			m += `"targetedTags":[`
			for i, tag := range tags {
				if i > 0 {
					m += ","
				}
				m += `"` + tag + `"`
			}
			m += "],"
		}
		return m + `"timestamp":1,"key":"k","value":1}`
	}
	tests := []struct {
		name   string
		from   pipeline.Origin // nil: made internally
		msg    string
		status pipeline.Status
		want   []string // sorted; nil: Recipients left unset
	}{
		{name: "from a client: every other link, offline ones too",
			from: client("pi-1"), msg: msg("pi-1", []string{selfID}),
			want: []string{"aws-1", "azure-1", "con-0a1b", "gcp-1"}},
		{name: "from a peer: not back to it",
			from: peer("aws-1"), msg: msg("pi-aws", []string{"aws-1", selfID}),
			want: []string{"azure-1", "con-0a1b", "gcp-1", "pi-1"}},
		{name: "relayed: not to instances already in the path",
			from: peer("azure-1"), msg: msg("pi-aws", []string{"aws-1", "azure-1", selfID}),
			want: []string{"con-0a1b", "gcp-1", "pi-1"}},
		{name: "not to the origin, even when it is not the sender",
			from: peer("azure-1"), msg: msg("gcp-1", []string{"azure-1", selfID}),
			want: []string{"aws-1", "con-0a1b", "pi-1"}},
		{name: "made internally: everyone",
			from: nil, msg: msg(selfID, []string{selfID}),
			want: []string{"aws-1", "azure-1", "con-0a1b", "gcp-1", "pi-1"}},
		{name: "targetedTags selects links carrying a tag",
			from: client("pi-1"), msg: msg("pi-1", []string{selfID}, "production"),
			want: []string{"aws-1", "azure-1"}},
		{name: "any one matching tag is enough",
			from: client("pi-1"), msg: msg("pi-1", []string{selfID}, "azure", "staging"),
			want: []string{"azure-1", "gcp-1"}},
		{name: "targeted at an offline durable link",
			from: client("pi-1"), msg: msg("pi-1", []string{selfID}, "gcp"),
			want: []string{"gcp-1"}},
		{name: "targeted at the sender's own tag: not back to the sender",
			from: client("pi-1"), msg: msg("pi-1", []string{selfID}, "local"),
			want: []string{"con-0a1b"}},
		{name: "no link carries the tag",
			from: client("pi-1"), msg: msg("pi-1", []string{selfID}, "nowhere"),
			want: []string{}},
		{name: "empty targetedTags: everyone",
			from: client("pi-1"), msg: msg("pi-1", []string{selfID}, []string{}...),
			want: []string{"aws-1", "azure-1", "con-0a1b", "gcp-1"}},
		{name: "duplicate: no recipients chosen",
			from: peer("aws-1"), msg: msg("pi-aws", []string{"aws-1", selfID}), status: pipeline.Duplicate},
		{name: "loop: no recipients chosen",
			from: peer("aws-1"), msg: msg("pi-aws", []string{"aws-1", selfID}), status: pipeline.Loop},
		{name: "rejected: no recipients chosen",
			from: peer("aws-1"), msg: msg("pi-aws", []string{"aws-1", selfID}), status: pipeline.Rejected},
		{name: "ACK: no recipients",
			from: peer("aws-1"), msg: `{"type":"ACK","messageId":"m1","clusterGroupId":"cg"}`},
		{name: "GK request: peers only",
			from: client("pi-1"), msg: `{"type":"GK","messageId":"q1","key":"k"}`,
			want: []string{"aws-1", "azure-1", "gcp-1"}},
		{name: "GK request targeted: matching peers only",
			from: client("pi-1"), msg: `{"type":"GK","messageId":"q2","key":"k","targetedTags":["production"]}`,
			want: []string{"aws-1", "azure-1"}},
		{name: "slipstream command: peers only",
			from: client("pi-1"), msg: `{"type":"CMD","messageId":"c1","command":"slipstream.ping"}`,
			want: []string{"aws-1", "azure-1", "gcp-1"}},
		{name: "application command: every link, like data",
			from: client("pi-1"), msg: `{"type":"CMD","messageId":"c2","command":"reload"}`,
			want: []string{"aws-1", "azure-1", "con-0a1b", "gcp-1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := withStatus(decoded(t, tc.from, tc.msg), tc.status)
			out := process(t, st, e)
			if len(out) != 1 || out[0] != e || e.Status != tc.status {
				t.Fatalf("got %d envelopes, status %v; want the one given back, %v", len(out), e.Status, tc.status)
			}
			if tc.want == nil {
				if e.Recipients != nil {
					t.Errorf("recipients = %v, want none chosen", e.Recipients)
				}
				return
			}
			if got := sorted(e.Recipients); !slices.Equal(got, tc.want) {
				t.Errorf("recipients = %v, want %v", got, tc.want)
			}
			if len(e.Recipients) == 0 && e.Recipients == nil {
				t.Errorf("recipients nil; want an empty, chosen list")
			}
		})
	}
}

// Each envelope of a batch gets its own recipient list: the stage's scratch
// space is not shared between them.
func TestTagFilterBatchDoesNotShareRecipients(t *testing.T) {
	h := newHarness(t)
	st := h.stage(`stage "tag_filter" {}`)
	h.attach(link.Spec{ID: "aws-1", Tags: []string{"aws"}, Peer: true, Durable: true})
	h.attach(link.Spec{ID: "azure-1", Tags: []string{"azure"}, Peer: true, Durable: true})
	a := decoded(t, client("pi-1"), `{"type":"SK","messageId":"a","targetedTags":["aws"],"key":"k","value":1}`)
	b := decoded(t, client("pi-1"), `{"type":"SK","messageId":"b","targetedTags":["azure"],"key":"k","value":1}`)
	process(t, st, a, b)
	if !slices.Equal(a.Recipients, []string{"aws-1"}) || !slices.Equal(b.Recipients, []string{"azure-1"}) {
		t.Errorf("recipients a=%v b=%v; want [aws-1] and [azure-1]", a.Recipients, b.Recipients)
	}
}

// An ephemeral link that detached is no recipient any more; a durable link
// that disconnected stays one (its deliveries wait in its outbox).
func TestTagFilterAfterDisconnect(t *testing.T) {
	h := newHarness(t)
	st := h.stage(`stage "tag_filter" {}`)
	durable, ephemeral := newFakeConn(), newFakeConn()
	dl, err := h.links.Attach(link.Spec{ID: "pi-1", Durable: true}, durable)
	if err != nil {
		t.Fatal(err)
	}
	el, err := h.links.Attach(link.Spec{ID: "con-1"}, ephemeral)
	if err != nil {
		t.Fatal(err)
	}
	h.links.Detach(dl, durable)
	h.links.Detach(el, ephemeral)
	e := decoded(t, nil, `{"type":"SK","messageId":"m1","originInstanceId":"self-1","clusterGroupId":"cg","key":"k","value":1}`)
	process(t, st, e)
	if !slices.Equal(e.Recipients, []string{"pi-1"}) {
		t.Errorf("recipients = %v, want [pi-1]", e.Recipients)
	}
}
