package stages

import (
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.opentelemetry.io/otel/trace"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/pipeline"
)

const decodeDefault = `stage "decode" {}`

// Every frame decode refuses is answered with exactly one ERR carrying the
// code of PROTOCOL.md "Control frames" and, when it could be read, the
// refused message's id; the envelope is Rejected, so nothing of it is stored,
// acknowledged or forwarded.
func TestDecodeRejects(t *testing.T) {
	h := newHarness(t)
	tests := []struct {
		name     string
		hcl      string // "" = decodeDefault
		frame    string
		wantCode string
		wantID   string // messageId echoed in the ERR
		wantText string // part of the ERR's error text
	}{
		{name: "truncated JSON, id already read", frame: `{"type":"SK","messageId":"m1",`, wantCode: slipstream.CodeBadJSON, wantID: "m1"},
		{name: "not JSON at all", frame: `hello`, wantCode: slipstream.CodeBadJSON},
		{name: "array instead of object", frame: `[{"type":"SK"}]`, wantCode: slipstream.CodeBadJSON},
		{name: "empty frame", frame: ``, wantCode: slipstream.CodeBadJSON},
		{name: "invalid UTF-8", frame: "{\"type\":\"SK\",\"key\":\"\xff\",\"value\":1}", wantCode: slipstream.CodeBadJSON},
		{name: "two objects", frame: `{"type":"SK"}{"type":"SK"}`, wantCode: slipstream.CodeBadJSON},
		{name: "key is a number", frame: `{"type":"SK","messageId":"m2","key":1,"value":1}`,
			wantCode: slipstream.CodeInvalid, wantID: "m2", wantText: "key must be a string"},
		{name: "timestamp is a string", frame: `{"type":"SK","messageId":"m3","key":"k","value":1,"timestamp":"now"}`,
			wantCode: slipstream.CodeInvalid, wantID: "m3", wantText: "timestamp"},
		{name: "messagePath holds a number", frame: `{"type":"SK","messageId":"m4","key":"k","value":1,"messagePath":["aws-1",2]}`,
			wantCode: slipstream.CodeInvalid, wantID: "m4", wantText: "messagePath"},
		{name: "duplicate member", frame: `{"type":"SK","messageId":"m5","key":"k","key":"k2","value":1}`,
			wantCode: slipstream.CodeInvalid, wantID: "m5", wantText: "duplicate"},
		{name: "missing type", frame: `{"messageId":"m6","key":"k","value":1}`,
			wantCode: slipstream.CodeInvalid, wantID: "m6", wantText: "type is required"},
		{name: "SK without key", frame: `{"type":"SK","messageId":"m7","value":1}`,
			wantCode: slipstream.CodeInvalid, wantID: "m7", wantText: "key is required"},
		{name: "SK without value", frame: `{"type":"SK","messageId":"m8","key":"k"}`,
			wantCode: slipstream.CodeInvalid, wantID: "m8", wantText: "value is required"},
		{name: "SA value is not an array", frame: `{"type":"SA","messageId":"m9","key":"k","value":{"a":1}}`,
			wantCode: slipstream.CodeInvalid, wantID: "m9", wantText: "SA value must be an array"},
		{name: "SW negative weight", frame: `{"type":"SW","messageId":"m10","key":"split","value":{"acq-a":70,"acq-b":-30}}`,
			wantCode: slipstream.CodeInvalid, wantID: "m10", wantText: ">= 0"},
		{name: "SW weight is a string", frame: `{"type":"SW","messageId":"m11","key":"split","value":{"acq-a":"70"}}`,
			wantCode: slipstream.CodeInvalid, wantID: "m11", wantText: "must be a number"},
		{name: "CMD without command", frame: `{"type":"CMD","messageId":"m12","args":{}}`,
			wantCode: slipstream.CodeInvalid, wantID: "m12", wantText: "command is required"},
		{name: "messageId too long: not echoed", frame: `{"type":"SK","messageId":"` + strings.Repeat("x", 129) + `","key":"k","value":1}`,
			wantCode: slipstream.CodeInvalid, wantText: "messageId"},
		{name: "messagePath over max_path", hcl: `stage "decode" { max_path = 2 }`,
			frame:    `{"type":"SK","messageId":"m13","key":"k","value":1,"messagePath":["a","b","c"]}`,
			wantCode: slipstream.CodeInvalid, wantID: "m13", wantText: "messagePath"},
		{name: "key over max_key", hcl: `stage "decode" { max_key = 4 }`,
			frame:    `{"type":"SK","messageId":"m14","key":"order:1","value":1}`,
			wantCode: slipstream.CodeInvalid, wantID: "m14", wantText: "key"},
		{name: "frame over max_frame", hcl: `stage "decode" { max_frame = 64 }`,
			frame:    `{"type":"SK","messageId":"m15","key":"k","value":"` + strings.Repeat("v", 64) + `"}`,
			wantCode: slipstream.CodeTooLarge, wantText: "64"},
		{name: "unknown type", frame: `{"type":"XX","messageId":"m16"}`,
			wantCode: slipstream.CodeUnsupported, wantID: "m16", wantText: "XX"},
		{name: "GK without a state stage", frame: `{"type":"GK","messageId":"m17","key":"k"}`,
			wantCode: slipstream.CodeUnsupported, wantID: "m17", wantText: "state"},
		{name: "reply to a request", frame: `{"type":"GK","messageId":"m18","inReplyTo":"q1","key":"k","found":false}`,
			wantCode: slipstream.CodeUnsupported, wantID: "m18"},
		{name: "HELLO mid-stream", frame: `{"type":"HELLO","protocol":1,"instanceId":"pi-1","role":"client"}`,
			wantCode: slipstream.CodeProtocol, wantText: "HELLO"},
		{name: "HELLO of another protocol version", frame: `{"type":"HELLO","protocol":2,"instanceId":"pi-1"}`,
			wantCode: slipstream.CodeUnsupported},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := tc.hcl
			if src == "" {
				src = decodeDefault
			}
			st := h.stage(src)
			from := client("pi-1")
			e := frame(from, tc.frame)

			out := process(t, st, e)

			if len(out) != 1 || out[0] != e {
				t.Fatalf("Process returned %d envelopes; want the one given back", len(out))
			}
			if e.Status != pipeline.Rejected {
				t.Errorf("status = %v, want rejected", e.Status)
			}
			replies := from.Replies()
			if len(replies) != 1 {
				t.Fatalf("got %d replies, want one ERR: %v", len(replies), replies)
			}
			r := replies[0]
			if r.Type != slipstream.TypeERR || r.Code != tc.wantCode || r.MessageID != tc.wantID {
				t.Errorf("reply = %s, want ERR code %q messageId %q", slipstream.Encode(r), tc.wantCode, tc.wantID)
			}
			if r.Error == "" || !strings.Contains(r.Error, tc.wantText) {
				t.Errorf("ERR text %q does not mention %q", r.Error, tc.wantText)
			}
		})
	}
}

// A frame that is refused while no link is known (an internally made
// envelope) is Rejected without a reply.
func TestDecodeRejectsWithoutOrigin(t *testing.T) {
	st := newHarness(t).stage(decodeDefault)
	e := frame(nil, `{"type":"SA","key":"k","value":1}`)
	process(t, st, e)
	if e.Status != pipeline.Rejected {
		t.Errorf("status = %v, want rejected", e.Status)
	}
}

// A good data message entering the mesh gets messageId, originInstanceId,
// clusterGroupId and timestamp when they are absent (routing step 4), and
// keeps them when present. The origin is the client's link id for a client,
// and this instance for a peer or an internal message.
func TestDecodeFillsMissingFields(t *testing.T) {
	h := newHarness(t)
	st := h.stage(decodeDefault)
	now := time.UnixMilli(1_750_000_000_123)
	st.(*Decode).now = func() time.Time { return now }

	tests := []struct {
		name      string
		from      pipeline.Origin
		frame     string
		wantID    string // "" = a generated one
		wantOrig  string
		wantClust string
		wantTS    int64
	}{
		{name: "bare SK from a client", from: client("pi-1"),
			frame:    `{"type":"SK","key":"order:1","value":{"status":"paid"}}`,
			wantOrig: "pi-1", wantClust: cluster, wantTS: now.UnixMilli()},
		{name: "bare SK from a peer", from: peer("aws-1"),
			frame:    `{"type":"SK","key":"order:1","value":1}`,
			wantOrig: selfID, wantClust: cluster, wantTS: now.UnixMilli()},
		{name: "bare SK made internally", from: nil,
			frame:    `{"type":"SK","key":"order:1","value":1}`,
			wantOrig: selfID, wantClust: cluster, wantTS: now.UnixMilli()},
		{name: "all fields present from a client", from: client("pi-1"),
			frame:  `{"type":"SK","messageId":"m1","originInstanceId":"pi-9","clusterGroupId":"cluster-2","timestamp":1700000000000,"key":"k","value":null}`,
			wantID: "m1", wantOrig: "pi-9", wantClust: "cluster-2", wantTS: 1700000000000},
		{name: "all fields present from a peer", from: peer("aws-1"),
			frame:  `{"type":"SW","messageId":"m2","originInstanceId":"pi-aws","sourceInstanceId":"aws-1","clusterGroupId":"cluster-1","messagePath":["aws-1"],"timestamp":1,"key":"split","value":{"a":70,"b":30}}`,
			wantID: "m2", wantOrig: "pi-aws", wantClust: "cluster-1", wantTS: 1},
		{name: "only messageId present", from: client("pi-2"),
			frame:  `{"type":"SA","messageId":"m3","key":"k","value":[1,2]}`,
			wantID: "m3", wantOrig: "pi-2", wantClust: cluster, wantTS: now.UnixMilli()},
		{name: "CMD", from: client("pi-1"),
			frame:    `{"type":"CMD","command":"app.reload","args":{"force":true}}`,
			wantOrig: "pi-1", wantClust: cluster, wantTS: now.UnixMilli()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := frame(tc.from, tc.frame)
			process(t, st, e)

			if e.Status != pipeline.Accepted || e.Msg == nil {
				t.Fatalf("status = %v, msg = %v; want accepted and decoded", e.Status, e.Msg)
			}
			if o, ok := tc.from.(*fakeOrigin); ok && len(o.Replies()) != 0 {
				t.Errorf("decode replied %v; a good message is answered by ack, later", o.Replies())
			}
			m := e.Msg
			switch {
			case tc.wantID != "" && m.MessageID != tc.wantID:
				t.Errorf("messageId = %q, want %q kept", m.MessageID, tc.wantID)
			case tc.wantID == "" && m.MessageID == "":
				t.Errorf("messageId not assigned")
			}
			if m.OriginInstanceID != tc.wantOrig || m.ClusterGroupID != tc.wantClust || m.Timestamp != tc.wantTS {
				t.Errorf("origin, cluster, timestamp = %q, %q, %d; want %q, %q, %d",
					m.OriginInstanceID, m.ClusterGroupID, m.Timestamp, tc.wantOrig, tc.wantClust, tc.wantTS)
			}
		})
	}

	t.Run("generated ids differ", func(t *testing.T) {
		a, b := frame(client("pi-1"), `{"type":"SK","key":"k","value":1}`), frame(client("pi-1"), `{"type":"SK","key":"k","value":1}`)
		process(t, st, a, b)
		if a.Msg.MessageID == b.Msg.MessageID {
			t.Errorf("two messages got the same generated id %q", a.Msg.MessageID)
		}
	})

	t.Run("path, source and application fields untouched", func(t *testing.T) {
		e := frame(peer("aws-1"), `{"type":"SK","messageId":"m","sourceInstanceId":"aws-1","messagePath":["aws-1"],"key":"k","value":1,"app":{"x":[1, 2]}}`)
		process(t, st, e)
		m := e.Msg
		if m.SourceInstanceID != "aws-1" || len(m.MessagePath) != 1 || m.MessagePath[0] != "aws-1" {
			t.Errorf("source %q path %v; decode must leave them to loop_check and persist", m.SourceInstanceID, m.MessagePath)
		}
		if len(m.Extra) != 1 || m.Extra[0].Name != "app" || string(m.Extra[0].Value) != `{"x":[1, 2]}` {
			t.Errorf("extra = %v, want app kept byte for byte", m.Extra)
		}
	})
}

// The W3C trace context in traceparent becomes the envelope's context, so
// the stages' spans join the sender's trace.
func TestDecodeTraceContext(t *testing.T) {
	st := newHarness(t).stage(decodeDefault)
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	wantTrace, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	wantSpan, _ := trace.SpanIDFromHex("00f067aa0ba902b7")

	tests := []struct {
		name      string
		frame     string
		wantValid bool
		wantState string
	}{
		{name: "traceparent", frame: `{"type":"SK","key":"k","value":1,"traceparent":"` + tp + `"}`, wantValid: true},
		{name: "traceparent and tracestate", frame: `{"type":"SK","key":"k","value":1,"traceparent":"` + tp + `","tracestate":"vendor=abc"}`,
			wantValid: true, wantState: "vendor=abc"},
		{name: "malformed traceparent", frame: `{"type":"SK","key":"k","value":1,"traceparent":"00-nonsense"}`},
		{name: "none", frame: `{"type":"SK","key":"k","value":1}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := frame(client("pi-1"), tc.frame)
			process(t, st, e)
			if e.Status != pipeline.Accepted {
				t.Fatalf("status = %v, want accepted (a bad traceparent is not a reason to refuse)", e.Status)
			}
			sc := trace.SpanContextFromContext(e.Context())
			if sc.IsValid() != tc.wantValid {
				t.Fatalf("span context valid = %v, want %v", sc.IsValid(), tc.wantValid)
			}
			if !tc.wantValid {
				return
			}
			if sc.TraceID() != wantTrace || sc.SpanID() != wantSpan || !sc.IsRemote() || !sc.IsSampled() {
				t.Errorf("span context = %v/%v remote=%v sampled=%v; want %v/%v remote sampled",
					sc.TraceID(), sc.SpanID(), sc.IsRemote(), sc.IsSampled(), wantTrace, wantSpan)
			}
			if got := sc.TraceState().String(); got != tc.wantState {
				t.Errorf("tracestate = %q, want %q", got, tc.wantState)
			}
		})
	}
}

// ACK and ERR frames are decoded and left Accepted for the ack stage, which
// hands them to the link's outbox; nothing is filled in and nothing replied.
// GK/GA/GW requests pass when the pipeline has a state stage to answer them.
func TestDecodePassesControlFramesAndRequests(t *testing.T) {
	h := newHarness(t)
	h.bc.StageKinds = []string{"decode", "loop_check", "dedup", "tag_filter", "persist", "ack", "state", "fanout"}
	st := h.stage(decodeDefault)
	tests := []struct {
		name     string
		frame    string
		wantType slipstream.Type
	}{
		{"ACK", `{"type":"ACK","messageId":"m1","clusterGroupId":"cg","originInstanceId":"aws-1","sourceInstanceId":"aws-1","messagePath":["aws-1"]}`, slipstream.TypeACK},
		{"ACK from a client, without cluster", `{"type":"ACK","messageId":"m1"}`, slipstream.TypeACK},
		{"ERR", `{"type":"ERR","messageId":"m1","code":"invalid","error":"SA value must be an array"}`, slipstream.TypeERR},
		{"GK with a state stage", `{"type":"GK","messageId":"q1","key":"order:1"}`, slipstream.TypeGK},
		{"GW with a state stage", `{"type":"GW","key":"split","targetedTags":["aws"]}`, slipstream.TypeGW},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			from := peer("aws-1")
			e := frame(from, tc.frame)
			process(t, st, e)
			if e.Status != pipeline.Accepted || e.Msg == nil || e.Msg.Type != tc.wantType {
				t.Fatalf("status %v msg %v; want accepted %s", e.Status, e.Msg, tc.wantType)
			}
			if r := from.Replies(); len(r) != 0 {
				t.Errorf("replies %v, want none", r)
			}
			if tc.wantType == slipstream.TypeACK && e.Msg.Timestamp != 0 {
				t.Errorf("an ACK got a timestamp: control frames are not filled")
			}
		})
	}
}

// Envelopes that are already decoded, or already decided, are passed on
// untouched: decode never parses a frame twice.
func TestDecodeSkipsDecodedAndDecided(t *testing.T) {
	st := newHarness(t).stage(decodeDefault)
	already := decoded(t, client("pi-1"), sk("m1", cluster))
	already.Raw = []byte("garbage that must not be parsed")
	msg := already.Msg
	rejected := withStatus(frame(client("pi-1"), `garbage`), pipeline.Rejected)
	dup := withStatus(frame(client("pi-1"), `{"type":"SK","key":"k","value":1}`), pipeline.Duplicate)

	out := process(t, st, already, rejected, dup)

	if len(out) != 3 {
		t.Fatalf("got %d envelopes, want 3", len(out))
	}
	if already.Msg != msg || already.Status != pipeline.Accepted {
		t.Errorf("decoded envelope was touched: status %v", already.Status)
	}
	if rejected.Msg != nil || dup.Msg != nil {
		t.Errorf("decided envelopes were decoded")
	}
	for _, e := range []*pipeline.Envelope{already, rejected, dup} {
		if r := e.From.(*fakeOrigin).Replies(); len(r) != 0 {
			t.Errorf("unexpected replies %v", r)
		}
	}
}

// A batch mixes good and bad frames: each is decided on its own, in order.
func TestDecodeMixedBatch(t *testing.T) {
	st := newHarness(t).stage(decodeDefault)
	from := client("pi-1")
	batch := []*pipeline.Envelope{
		frame(from, `{"type":"SK","messageId":"a","key":"k","value":1}`),
		frame(from, `{"type":"SA","messageId":"b","key":"k","value":1}`),
		frame(from, `{`),
		frame(from, `{"type":"SW","messageId":"d","key":"k","value":{"x":1}}`),
	}
	out := process(t, st, batch...)
	want := []pipeline.Status{pipeline.Accepted, pipeline.Rejected, pipeline.Rejected, pipeline.Accepted}
	if got := statuses(out); !equalStatuses(got, want) {
		t.Errorf("statuses = %v, want %v", got, want)
	}
	var codes []string
	for _, r := range from.Replies() {
		codes = append(codes, r.MessageID+":"+r.Code)
	}
	if strings.Join(codes, " ") != "b:invalid :bad_json" {
		t.Errorf("ERR replies = %v, want [b:invalid :bad_json]", codes)
	}
}

func equalStatuses(a, b []pipeline.Status) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The limits are checked when the configuration is loaded, pointing at the
// offending attribute.
func TestDecodeConfig(t *testing.T) {
	tests := []struct {
		name    string
		hcl     string
		wantErr string // "" = valid
	}{
		{"defaults", `stage "decode" {}`, ""},
		{"all limits", "stage \"decode\" {\n  max_frame = 65536\n  max_path = 8\n  max_message_id = 64\n  max_key = 256\n  max_tags = 4\n  max_tag_len = 16\n}", ""},
		{"max_frame = 0", "stage \"decode\" {\n  max_frame = 0\n}", `test.hcl:2:15: Invalid value for "max_frame"; must be greater than 0`},
		{"negative max_path", "stage \"decode\" {\n  max_path = -1\n}", `test.hcl:2:14: Invalid value for "max_path"; must be greater than 0`},
		{"max_frame of the wrong type", "stage \"decode\" {\n  max_frame = \"big\"\n}", `test.hcl:2:15:`},
		{"unknown attribute", "stage \"decode\" {\n  max_frames = 1\n}", `test.hcl:2:3: Unsupported argument`},
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
}

// Loading one file twice must print the same diagnostics: a config with two
// bad limits names the same attribute every time.
func TestDecodeConfigDiagnosticIsStable(t *testing.T) {
	src := "stage \"decode\" {\n  max_frame = 0\n  max_path = 0\n  max_key = 0\n}"
	first := configDiags(t, src)
	for range 50 {
		if got := configDiags(t, src); got != first {
			t.Fatalf("diagnostics differ between runs:\n%s\nthen:\n%s", first, got)
		}
	}
}

// A link's permissions: each refused case answers ERR forbidden and the
// envelope is Rejected (nothing stored or forwarded); replies and control
// frames are always allowed.
func TestDecodeEnforcesPermissions(t *testing.T) {
	h := newHarness(t)
	h.bc.StageKinds = []string{"decode", "tag_filter", "state", "fanout"}
	st := h.stage(`stage "decode" {}`)
	writer := client("pos-1")
	writer.perms = &link.Permissions{Publish: []slipstream.Type{slipstream.TypeSK}, Targets: []string{"payments", "eu"}}
	reader := client("dash-1")
	reader.perms = &link.Permissions{Publish: []slipstream.Type{slipstream.TypeGK}}
	open := client("app-1") // nil permissions: everything but slipstream.* commands
	cases := []struct {
		from    *fakeOrigin
		raw     string
		wantErr string // "" = accepted
	}{
		{writer, `{"type":"SK","messageId":"a1","key":"k","value":1,"targetedTags":["payments"]}`, ""},
		{writer, `{"type":"SK","messageId":"a2","key":"k","value":1,"targetedTags":["payments","eu"]}`, ""},
		{writer, `{"type":"SK","messageId":"a3","key":"k","value":1}`, `link "pos-1" must name targetedTags (allowed: [payments eu])`},
		{writer, `{"type":"SK","messageId":"a4","key":"k","value":1,"targetedTags":["payments","us"]}`, `link "pos-1" may not target tag "us" (allowed: [payments eu])`},
		{writer, `{"type":"SA","messageId":"a5","key":"k","value":[],"targetedTags":["eu"]}`, `link "pos-1" may not publish SA messages`},
		{writer, `{"type":"GK","messageId":"a6","key":"k","targetedTags":["eu"]}`, `link "pos-1" may not publish GK messages`},
		{writer, `{"type":"ACK","messageId":"m9","clusterGroupId":"cg"}`, ""},
		{writer, `{"type":"CMD","messageId":"a7","inReplyTo":"c1","result":1}`, ""},
		{reader, `{"type":"GK","messageId":"b1","key":"k"}`, ""},
		{reader, `{"type":"GA","messageId":"b2","key":"k"}`, `link "dash-1" may not publish GA messages`},
		{reader, `{"type":"SK","messageId":"b3","key":"k","value":1}`, `link "dash-1" may not publish SK messages`},
		{open, `{"type":"SW","messageId":"c1","key":"k","value":{"a":1}}`, ""},
		{open, `{"type":"GK","messageId":"c2","key":"k"}`, ""},
	}
	for _, c := range cases {
		before := len(c.from.Replies())
		e := frame(c.from, c.raw)
		process(t, st, e)
		rs := c.from.Replies()[before:]
		if c.wantErr == "" {
			if e.Status != pipeline.Accepted || len(rs) != 0 {
				t.Errorf("%s from %s: status %v replies %+v, want accepted", c.raw, c.from.id, e.Status, rs)
			}
			continue
		}
		if e.Status != pipeline.Rejected || len(rs) != 1 || rs[0].Code != slipstream.CodeForbidden || rs[0].Error != c.wantErr {
			t.Errorf("%s from %s: status %v replies %+v, want ERR forbidden %q", c.raw, c.from.id, e.Status, rs, c.wantErr)
		}
	}
	var mt dto.Metric
	if err := st.(*Decode).forbidden.WithLabelValues("SK").Write(&mt); err != nil {
		t.Fatal(err)
	}
	if got := mt.GetCounter().GetValue(); got != 3 {
		t.Errorf("slipstream_forbidden_total{type=SK} = %v, want 3", got)
	}
}
