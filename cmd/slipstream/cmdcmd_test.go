package main

import (
	"fmt"
	"strings"
	"testing"
)

func TestCmd(t *testing.T) {
	mi := startMsgInstance(t)
	code, out, errOut := runCLI(t, "cmd", "slipstream.ping", "-url", mi.url, "-timeout", "500ms")
	if code != exitOK || !strings.HasPrefix(out, `cli-msg  {"instanceId":"cli-msg","pong":true`) || strings.Count(out, "\n") != 1 {
		t.Fatalf("cmd slipstream.ping: exit %d: %q %s", code, out, errOut)
	}
	code, out, _ = runCLI(t, "cmd", "slipstream.set_log_level", "-args", `{"level":"debug"}`, "-url", mi.url, "-n", "1", "-json")
	if code != exitOK || !strings.HasPrefix(out, `{"type":"CMD"`) || !strings.Contains(out, `"result":{"level":"debug","previous":"error"}`) {
		t.Fatalf("cmd set_log_level -json: exit %d: %q", code, out)
	}
	code, out, errOut = runCLI(t, "cmd", "slipstream.set_log_level", "-args", `{"level":"loud"}`, "-url", mi.url, "-n", "1")
	if code != exitError || !strings.HasPrefix(out, "cli-msg  error: ") || !strings.Contains(errOut, "every reply to \"slipstream.set_log_level\" is an error") {
		t.Fatalf("cmd with a bad level: exit %d: %q %s", code, out, errOut)
	}
	code, _, errOut = runCLI(t, "cmd", "slipstream.set_log_level", "-args", `{"level":"info"}`, "-url", mi.locked)
	if code != exitError || !strings.Contains(errOut, `the instance refused command "slipstream.set_log_level"`) || !strings.Contains(errOut, "allow_commands") {
		t.Fatalf("cmd without permission: exit %d: %s", code, errOut)
	}

	// An application command: answered by the clients it is delivered to.
	code, _, errOut = runCLI(t, "cmd", "app.reload", "-url", mi.url, "-target", "workers", "-timeout", "300ms")
	if code != exitError || !strings.Contains(errOut, `no answer to command "app.reload" within 300ms: no client that received it`) {
		t.Fatalf("cmd nobody answers: exit %d: %s", code, errOut)
	}
	worker := runMsgBackground(t, "sub", "-url", mi.url, "-id", "worker-1", "-tags", "workers", "-n", "1", "-timeout", "20s")
	msgWaitFor(t, "the worker is subscribed", func() bool { return strings.Contains(worker.stderr.String(), "subscribed to ") })
	cmd := runMsgBackground(t, "cmd", "app.reload", "-url", mi.url, "-target", "workers", "-args", `{"full":true}`, "-n", "1", "-timeout", "20s")
	if code := worker.wait(t); code != exitOK || !strings.Contains(worker.stdout.String(), `"command":"app.reload"`) {
		t.Fatalf("worker: exit %d: %s %s", code, worker.stdout.String(), worker.stderr.String())
	}
	// The worker answers with pub -raw: a CMD reply carrying inReplyTo.
	var id string
	if i := strings.Index(worker.stdout.String(), `"messageId":"`); i >= 0 {
		id = worker.stdout.String()[i+len(`"messageId":"`):]
		id = id[:strings.IndexByte(id, '"')]
	}
	reply := fmt.Sprintf(`{"type":"CMD","messageId":"r-%s","inReplyTo":%q,"result":{"reloaded":3}}`, id, id)
	if code, out, errOut := runCLI(t, "pub", "-url", mi.url, "-raw", reply, "-timeout", "300ms"); code != exitOK {
		t.Fatalf("the worker's reply: exit %d: %s %s", code, out, errOut)
	}
	if code := cmd.wait(t); code != exitOK || !strings.HasSuffix(cmd.stdout.String(), `  {"reloaded":3}`+"\n") {
		t.Fatalf("cmd app.reload: exit %d: %q %s", code, cmd.stdout.String(), cmd.stderr.String())
	}

	for _, args := range [][]string{{"cmd"}, {"cmd", "a", "b"}, {"cmd", "x", "-args", "nope"}, {"cmd", "x", "-n", "-2"}} {
		if code, _, errOut := runCLI(t, append(args, "-url", mi.url)...); code != exitUsage {
			t.Errorf("%q: exit %d: %s", args, code, errOut)
		}
	}
	if code, out, _ := runCLI(t, "help"); code != exitOK || !strings.Contains(out, "  cmd ") || !strings.Contains(out, "  sub ") {
		t.Errorf("usage does not list the commands:\n%s", out)
	}
}
