package stages

import (
	"slices"
	"strings"
	"testing"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// loop_check drops a message that already passed through this instance
// (routing step 2) and otherwise appends this instance to its path (step 4);
// a message that would exceed max_hops is refused with ERR invalid.
func TestLoopCheck(t *testing.T) {
	st := newHarness(t).stage(`stage "loop_check" { max_hops = 3 }`)
	tests := []struct {
		name       string
		env        func(t *testing.T, from *fakeOrigin) *pipeline.Envelope
		wantStatus pipeline.Status
		wantPath   []string
		wantErr    string // ERR code answered, "" for none
	}{
		{name: "own id last in path: loop",
			env: func(t *testing.T, o *fakeOrigin) *pipeline.Envelope {
				return decoded(t, o, sk("m1", cluster, "aws-1", selfID))
			},
			wantStatus: pipeline.Loop, wantPath: []string{"aws-1", selfID}},
		{name: "own id first in path: loop",
			env: func(t *testing.T, o *fakeOrigin) *pipeline.Envelope {
				return decoded(t, o, sk("m1", cluster, selfID, "aws-1"))
			},
			wantStatus: pipeline.Loop, wantPath: []string{selfID, "aws-1"}},
		{name: "own id in a full path: still a loop, not refused",
			env: func(t *testing.T, o *fakeOrigin) *pipeline.Envelope {
				return decoded(t, o, sk("m1", cluster, "a", selfID, "b"))
			},
			wantStatus: pipeline.Loop, wantPath: []string{"a", selfID, "b"}},
		{name: "from a peer: own id appended",
			env:        func(t *testing.T, o *fakeOrigin) *pipeline.Envelope { return decoded(t, o, sk("m1", cluster, "aws-1")) },
			wantStatus: pipeline.Accepted, wantPath: []string{"aws-1", selfID}},
		{name: "from a client without path: path started",
			env:        func(t *testing.T, o *fakeOrigin) *pipeline.Envelope { return decoded(t, o, sk("m1", cluster)) },
			wantStatus: pipeline.Accepted, wantPath: []string{selfID}},
		{name: "empty path",
			env: func(t *testing.T, o *fakeOrigin) *pipeline.Envelope {
				return decoded(t, o, sk("m1", cluster, []string{}...))
			},
			wantStatus: pipeline.Accepted, wantPath: []string{selfID}},
		{name: "id that merely contains own id is not a loop",
			env: func(t *testing.T, o *fakeOrigin) *pipeline.Envelope {
				return decoded(t, o, sk("m1", cluster, selfID+"0"))
			},
			wantStatus: pipeline.Accepted, wantPath: []string{selfID + "0", selfID}},
		{name: "path one below max_hops: last hop allowed",
			env: func(t *testing.T, o *fakeOrigin) *pipeline.Envelope {
				return decoded(t, o, sk("m1", cluster, "a", "b"))
			},
			wantStatus: pipeline.Accepted, wantPath: []string{"a", "b", selfID}},
		{name: "path at max_hops: refused",
			env: func(t *testing.T, o *fakeOrigin) *pipeline.Envelope {
				return decoded(t, o, sk("m1", cluster, "a", "b", "c"))
			},
			wantStatus: pipeline.Rejected, wantPath: []string{"a", "b", "c"}, wantErr: slipstream.CodeInvalid},
		{name: "CMD is data too",
			env: func(t *testing.T, o *fakeOrigin) *pipeline.Envelope {
				return decoded(t, o, `{"type":"CMD","messageId":"c1","command":"app.x","messagePath":["`+selfID+`"]}`)
			},
			wantStatus: pipeline.Loop, wantPath: []string{selfID}},
		{name: "ACK untouched",
			env: func(t *testing.T, o *fakeOrigin) *pipeline.Envelope {
				return decoded(t, o, `{"type":"ACK","messageId":"m1","messagePath":["`+selfID+`"]}`)
			},
			wantStatus: pipeline.Accepted, wantPath: []string{selfID}},
		{name: "GK request: own id appended",
			env: func(t *testing.T, o *fakeOrigin) *pipeline.Envelope {
				return decoded(t, o, `{"type":"GK","messageId":"q1","key":"k","messagePath":["aws-1"]}`)
			},
			wantStatus: pipeline.Accepted, wantPath: []string{"aws-1", selfID}},
		{name: "GK request that looped: dropped, no ERR",
			env: func(t *testing.T, o *fakeOrigin) *pipeline.Envelope {
				return decoded(t, o, `{"type":"GK","messageId":"q1","key":"k","messagePath":["aws-1","`+selfID+`"]}`)
			},
			wantStatus: pipeline.Loop, wantPath: []string{"aws-1", selfID}},
		{name: "reply untouched (routed by the request table, not the path)",
			env: func(t *testing.T, o *fakeOrigin) *pipeline.Envelope {
				return decoded(t, o, `{"type":"GK","messageId":"r1","inReplyTo":"q1","key":"k","found":false,"messagePath":["aws-1"]}`)
			},
			wantStatus: pipeline.Accepted, wantPath: []string{"aws-1"}},
		{name: "reply untouched",
			env: func(t *testing.T, o *fakeOrigin) *pipeline.Envelope {
				return decoded(t, o, `{"type":"CMD","messageId":"r1","inReplyTo":"c1","result":1,"messagePath":["`+selfID+`"]}`)
			},
			wantStatus: pipeline.Accepted, wantPath: []string{selfID}},
		{name: "duplicate untouched",
			env: func(t *testing.T, o *fakeOrigin) *pipeline.Envelope {
				return withStatus(decoded(t, o, sk("m1", cluster, "aws-1")), pipeline.Duplicate)
			},
			wantStatus: pipeline.Duplicate, wantPath: []string{"aws-1"}},
		{name: "rejected untouched even with own id",
			env: func(t *testing.T, o *fakeOrigin) *pipeline.Envelope {
				return withStatus(decoded(t, o, sk("m1", cluster, selfID)), pipeline.Rejected)
			},
			wantStatus: pipeline.Rejected, wantPath: []string{selfID}},
		{name: "undecoded frame untouched",
			env: func(t *testing.T, o *fakeOrigin) *pipeline.Envelope {
				return frame(o, `{"type":"SK"}`)
			},
			wantStatus: pipeline.Accepted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			from := peer("aws-1")
			e := tc.env(t, from)

			out := process(t, st, e)

			if len(out) != 1 || out[0] != e {
				t.Fatalf("Process returned %d envelopes; want the one given back", len(out))
			}
			if e.Status != tc.wantStatus {
				t.Errorf("status = %v, want %v", e.Status, tc.wantStatus)
			}
			var path []string
			if e.Msg != nil {
				path = e.Msg.MessagePath
			}
			if !slices.Equal(path, tc.wantPath) {
				t.Errorf("messagePath = %q, want %q", path, tc.wantPath)
			}
			replies := from.Replies()
			switch {
			case tc.wantErr == "" && len(replies) > 0:
				t.Errorf("unexpected replies %v (a loop is ACKed by the ack stage, not here)", replies)
			case tc.wantErr != "":
				if len(replies) != 1 || replies[0].Type != slipstream.TypeERR || replies[0].Code != tc.wantErr || replies[0].MessageID != "m1" {
					t.Fatalf("replies = %v, want one ERR %s for m1", replies, tc.wantErr)
				}
				if !strings.Contains(replies[0].Error, "3") {
					t.Errorf("ERR text %q does not name the limit", replies[0].Error)
				}
			}
		})
	}
}

// The default max_hops is the protocol's messagePath limit (32 hops).
func TestLoopCheckDefaultMaxHops(t *testing.T) {
	st := newHarness(t).stage(`stage "loop_check" {}`)
	path := make([]string, slipstream.DefaultMaxPath-1)
	for i := range path {
		path[i] = "i" + string(rune('a'+i%26)) + string(rune('a'+i/26))
	}
	ok := decoded(t, peer("aws-1"), sk("m1", cluster, path...))
	full := decoded(t, peer("aws-1"), sk("m2", cluster, append(path, "last")...))
	process(t, st, ok, full)
	if ok.Status != pipeline.Accepted || len(ok.Msg.MessagePath) != slipstream.DefaultMaxPath {
		t.Errorf("31 hops: status %v, path len %d; want accepted with 32", ok.Status, len(ok.Msg.MessagePath))
	}
	if full.Status != pipeline.Rejected {
		t.Errorf("32 hops: status %v, want rejected", full.Status)
	}
}

func TestLoopCheckConfig(t *testing.T) {
	tests := []struct{ name, hcl, wantErr string }{
		{"default", `stage "loop_check" {}`, ""},
		{"max_hops = 1", `stage "loop_check" { max_hops = 1 }`, ""},
		{"max_hops = 0", "stage \"loop_check\" {\n  max_hops = 0\n}", `test.hcl:2:14: Invalid value for "max_hops"; must be greater than 0`},
		{"unknown attribute", "stage \"loop_check\" {\n  hops = 3\n}", `test.hcl:2:3: Unsupported argument`},
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
