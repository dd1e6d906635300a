package stages

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/pipeline"
)

func commandHarness(t *testing.T) (*harness, pipeline.Stage, *[]string) {
	h := newHarness(t)
	var ran []string
	h.bc.Commands = pipeline.NewCommands()
	h.bc.Commands.Register(pipeline.Command{Name: "slipstream.echo", Run: func(_ context.Context, args json.RawMessage) (any, error) {
		ran = append(ran, "echo "+string(args))
		return map[string]json.RawMessage{"args": args}, nil
	}})
	h.bc.Commands.Register(pipeline.Command{Name: "slipstream.fail", Run: func(context.Context, json.RawMessage) (any, error) {
		ran = append(ran, "fail")
		return nil, errors.New("it broke")
	}})
	h.bc.Commands.Register(pipeline.Command{Name: "slipstream.slow", Run: func(ctx context.Context, _ json.RawMessage) (any, error) {
		<-ctx.Done() // ends at the stage's timeout
		ran = append(ran, "slow")
		return nil, ctx.Err()
	}})
	return h, h.stage("stage \"command\" {\n  timeout = \"100ms\"\n}"), &ran
}

func cmdMsg(id, command, args string, tags ...string) string {
	m := `{"type":"CMD","messageId":"` + id + `","originInstanceId":"pi-1","clusterGroupId":"cg","messagePath":["self-1"],"timestamp":1,"command":"` + command + `"`
	if args != "" {
		m += `,"args":` + args
	}
	if len(tags) > 0 {
		b, _ := json.Marshal(tags)
		m += `,"targetedTags":` + string(b)
	}
	return m + "}"
}

func TestCommandRunsAndReplies(t *testing.T) {
	_, st, ran := commandHarness(t)
	tests := []struct {
		msg        string
		wantResult string
		wantError  string
	}{
		{cmdMsg("c1", "slipstream.echo", `{"x":1}`), `{"args":{"x":1}}`, ""},
		{cmdMsg("c2", "slipstream.echo", `null`), `{"args":null}`, ""},
		{cmdMsg("c3", "slipstream.fail", ""), "", "it broke"},
		{cmdMsg("c4", "slipstream.nope", ""), "", `unknown command "slipstream.nope"; slipstream.help lists the commands of this instance`},
		{cmdMsg("c5", "slipstream.slow", ""), "", "context deadline exceeded"},
	}
	for _, tc := range tests {
		from := client("pi-1")
		e := decoded(t, from, tc.msg)
		process(t, st, e)
		rs := from.Replies()
		if len(rs) != 1 {
			t.Fatalf("%s: %d replies, want 1", tc.msg, len(rs))
		}
		r := rs[0]
		if r.Type != slipstream.TypeCMD || r.InReplyTo != e.Msg.MessageID || r.OriginInstanceID != selfID {
			t.Errorf("%s: reply %+v does not answer it", tc.msg, r)
		}
		if string(r.Result) != tc.wantResult || r.Error != tc.wantError {
			t.Errorf("%s: result %s error %q; want %s %q", tc.msg, r.Result, r.Error, tc.wantResult, tc.wantError)
		}
		if err := r.Validate(nil); err != nil {
			t.Errorf("%s: reply invalid: %v", tc.msg, err)
		}
	}
	if want := []string{"echo {\"x\":1}", "echo ", "fail", "slow"}; strings.Join(*ran, "|") != strings.Join(want, "|") {
		t.Errorf("ran %q, want %q", *ran, want)
	}
}

func TestCommandSkipsWhatIsNotItsToRun(t *testing.T) {
	_, st, ran := commandHarness(t)
	for _, e := range []*pipeline.Envelope{
		decoded(t, client("pi-1"), cmdMsg("c1", "reload-config", `{}`)),                                  // application command: data for clients
		decoded(t, client("pi-1"), cmdMsg("c2", "slipstream.echo", `{}`, "azure")),                       // targeted at other instances
		withStatus(decoded(t, peer("aws-1"), cmdMsg("c3", "slipstream.echo", `{}`)), pipeline.Duplicate), // already run
		withStatus(decoded(t, peer("aws-1"), cmdMsg("c4", "slipstream.echo", `{}`)), pipeline.Failed),    // not stored
		decoded(t, client("pi-1"), `{"type":"CMD","messageId":"r1","inReplyTo":"c0","result":1}`),        // a reply
	} {
		out := process(t, st, e)
		if len(out) != 1 {
			t.Fatalf("%s: dropped", e.Raw)
		}
		if rs := e.From.(*fakeOrigin).Replies(); len(rs) != 0 {
			t.Errorf("%s: replied %+v", e.Raw, rs)
		}
	}
	if len(*ran) != 0 {
		t.Errorf("ran %q, want nothing", *ran)
	}
}

// decode refuses slipstream.* commands from links without allow_commands
// with ERR forbidden, before anything is stored; application commands and
// allowed links pass.
func TestDecodeForbidsCommandsWithoutPermission(t *testing.T) {
	h := newHarness(t)
	h.bc.StageKinds = []string{"decode", "command"}
	st := h.stage(`stage "decode" {}`)
	plain, allowed := client("pi-1"), client("ops-1")
	allowed.commands = true
	cases := []struct {
		from *fakeOrigin
		raw  string
		want pipeline.Status
	}{
		{plain, `{"type":"CMD","messageId":"c1","command":"slipstream.set_log_level","args":{"level":"debug"}}`, pipeline.Rejected},
		{plain, `{"type":"CMD","messageId":"c2","command":"reload"}`, pipeline.Accepted},
		{allowed, `{"type":"CMD","messageId":"c3","command":"slipstream.set_log_level","args":{"level":"debug"}}`, pipeline.Accepted},
	}
	for _, c := range cases {
		e := frame(c.from, c.raw)
		process(t, st, e)
		if e.Status != c.want {
			t.Errorf("%s from %s: status %v, want %v", c.raw, c.from.id, e.Status, c.want)
		}
	}
	rs := plain.Replies()
	if len(rs) != 1 || rs[0].Type != slipstream.TypeERR || rs[0].Code != slipstream.CodeForbidden || rs[0].MessageID != "c1" ||
		!strings.Contains(rs[0].Error, "allow_commands") {
		t.Errorf("replies to the plain client = %+v, want one ERR forbidden for c1 naming allow_commands", rs)
	}
}
