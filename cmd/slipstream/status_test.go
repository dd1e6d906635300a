package main

import (
	"net"
	"strings"
	"testing"
)

// status, top -once, tap and graph against a real in-process instance.
func TestStatusTopTapGraph(t *testing.T) {
	mi := startMsgInstance(t)
	admin := mi.in.AdminAddr()
	if code, out, errOut := runCLI(t, "pub", "-url", mi.url, "-key", "k", "-value", "1", "-message-id", "st-1"); code != exitOK {
		t.Fatalf("pub: exit %d: %q %s", code, out, errOut)
	}

	code, out, errOut := runCLI(t, "status", "-admin", admin)
	if code != exitOK {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	for _, want := range []string{"Instance cli-msg (cluster group", "tags cli", "LINK", "Pipeline sync", "STAGE", "PROCESSED"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	if !hasRow(out, "persist", "1") {
		t.Errorf("status shows no persist row with 1 processed:\n%s", out)
	}
	code, out, _ = runCLI(t, "status", "-admin", admin, "-json")
	if code != exitOK || !strings.HasPrefix(out, `{"instance":{"id":"cli-msg"`) {
		t.Errorf("status -json: exit %d: %s", code, out)
	}

	code, out, errOut = runCLI(t, "top", "-admin", admin, "-once", "-interval", "100ms")
	if code != exitOK || !strings.Contains(out, "MSG/S") || !strings.Contains(out, "instance cli-msg") || !hasRow(out, "sync", "decode") {
		t.Errorf("top -once: exit %d: %s%s", code, out, errOut)
	}

	// tap prints the message published while it runs, then -n 1 ends it.
	bg := runMsgBackground(t, "tap", "-admin", admin, "-stage", "persist", "-pipeline", "sync", "-n", "1")
	msgWaitFor(t, "tap started", func() bool { return strings.Contains(bg.stderr.String(), "tapping stage persist") })
	if code, out, errOut := runCLI(t, "pub", "-url", mi.url, "-key", "tk", "-value", `"hello"`, "-message-id", "tap-1"); code != exitOK {
		t.Fatalf("pub: exit %d: %q %s", code, out, errOut)
	}
	if code := bg.wait(t); code != exitOK {
		t.Fatalf("tap: exit %d: %s", code, bg.stderr.String())
	}
	if out := bg.stdout.String(); !strings.Contains(out, "sync/persist SK id=tap-1 key=tk") || !strings.Contains(out, `value="hello"`) {
		t.Errorf("tap printed %q", out)
	}

	code, out, _ = runCLI(t, "graph", "-c", mi.config)
	for _, want := range []string{`digraph "slipstream cli-msg"`, "source__websocket_server_ingress -> p__sync__decode;",
		"p__sync__decode -> p__sync__loop_check;", "p__sync__fanout -> sink__websocket_links;"} {
		if code != exitOK || !strings.Contains(out, want) {
			t.Errorf("graph: exit %d, lacks %q:\n%s", code, want, out)
		}
	}
	code, out, _ = runCLI(t, "graph", "-c", mi.config, "-format", "mermaid")
	if code != exitOK || !strings.HasPrefix(out, "flowchart LR\n") || !strings.Contains(out, "p__sync__fanout --> sink__websocket_links") {
		t.Errorf("graph -format mermaid: exit %d:\n%s", code, out)
	}
}

// hasRow reports whether a line of out has the fields want in order.
func hasRow(out string, want ...string) bool {
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= len(want) && strings.Join(f[:len(want)], " ") == strings.Join(want, " ") {
			return true
		}
	}
	return false
}

func TestStatusTopTapGraphErrors(t *testing.T) {
	mi := startMsgInstance(t)
	admin := mi.in.AdminAddr()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"status", "-admin", dead}, exitError, "cannot reach the admin API"},
		{[]string{"status", "extra"}, exitUsage, "status takes no arguments"},
		{[]string{"top", "-admin", admin, "-interval", "1ms"}, exitUsage, "too short"},
		{[]string{"tap", "-admin", admin}, exitUsage, "tap needs -stage NAME"},
		{[]string{"tap", "-admin", admin, "-stage", "nope"}, exitError, `no stage "nope"`},
		{[]string{"tap", "-admin", dead, "-stage", "persist"}, exitError, "cannot reach the admin API"},
		{[]string{"graph", "-format", "svg"}, exitUsage, "want dot or mermaid"},
	} {
		code, _, errOut := runCLI(t, c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d (want %d), stderr %q lacks %q", c.args, code, c.code, errOut, c.want)
		}
	}
}
