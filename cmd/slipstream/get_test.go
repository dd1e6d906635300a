package main

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestGet(t *testing.T) {
	mi := startMsgInstance(t)
	for _, args := range [][]string{
		{"pub", "-url", mi.url, "-key", "order:1", "-value", `{"status": "paid"}`},
		{"pub", "-url", mi.url, "-type", "sw", "-key", "split", "-value", `{"a":70,"b":30}`},
	} {
		if code, _, errOut := runCLI(t, args...); code != exitOK {
			t.Fatalf("%q: exit %d: %s", args, code, errOut)
		}
	}

	// -config derives the URL from the file (0.0.0.0 -> 127.0.0.1, its path).
	code, out, errOut := runCLI(t, "get", "-config", mi.config, "order:1")
	if code != exitOK || out != "{\"status\":\"paid\"}\n" {
		t.Fatalf("get order:1: exit %d: %q %s", code, out, errOut)
	}
	code, out, _ = runCLI(t, "get", "split", "-url", mi.url, "-type", "GW", "-json")
	if code != exitOK || !strings.Contains(out, `"inReplyTo"`) || !strings.Contains(out, `"found":true`) || !strings.Contains(out, `"value":{"a":70,"b":30}`) {
		t.Fatalf("get -type GW -json: exit %d: %s", code, out)
	}
	code, out, errOut = runCLI(t, "get", "-url", mi.url, "missing")
	if code != exitNotFound || out != "" || !strings.Contains(errOut, `key "missing" not found (answered by cli-msg)`) {
		t.Fatalf("get missing: exit %d: %q %s", code, out, errOut)
	}
	code, _, errOut = runCLI(t, "get", "-url", mi.url, "-type", "GA", "order:1")
	if code != exitError || !strings.Contains(errOut, "cli-msg answered: ") || !strings.Contains(errOut, "set by SK") {
		t.Fatalf("get -type GA of an SK key: exit %d: %s", code, errOut)
	}

	// -all prints every reply with its instance.
	code, out, _ = runCLI(t, "get", "-url", mi.url, "-all", "-timeout", "500ms", "order:1")
	if code != exitOK || out != "cli-msg  {\"status\":\"paid\"}\n" {
		t.Fatalf("get -all: exit %d: %q", code, out)
	}
	code, out, _ = runCLI(t, "get", "-url", mi.url, "-all", "-timeout", "500ms", "missing")
	if code != exitNotFound || out != "cli-msg  not found\n" {
		t.Fatalf("get -all missing: exit %d: %q", code, out)
	}

	// Nobody answers, the URL is wrong, the flags are wrong.
	code, _, errOut = runCLI(t, "get", "-url", mi.url, "-target", "nowhere", "-timeout", "300ms", "order:1")
	if code != exitError || !strings.Contains(errOut, `no answer to GK "order:1" within 300ms`) || !strings.Contains(errOut, "-target nowhere") {
		t.Fatalf("get -target nowhere: exit %d: %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "get", "-url", "ws://127.0.0.1:1/ws", "order:1")
	if code != exitError || !strings.Contains(errOut, "cannot connect to ws://127.0.0.1:1/ws") || !strings.Contains(errOut, "is the instance running? set -url") {
		t.Fatalf("get from an unreachable URL: exit %d: %s", code, errOut)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"get"}, "needs exactly one KEY"},
		{[]string{"get", "-type", "XX", "k"}, `unknown -type "XX": want GK`},
		{[]string{"get", "-tags", "a", "k"}, "-tags needs -id"},
		{[]string{"get", "-timeout", "0", "k"}, "-timeout must be more than 0"},
		{[]string{"get", "-url", "http://x/ws", "k"}, "must start with ws://"},
		{[]string{"get", "-config", filepath.Join(t.TempDir(), "none.hcl"), "k"}, "read config"},
	} {
		code, _, errOut := runCLI(t, c.args...)
		if (code != exitUsage && code != exitError) || !strings.Contains(errOut, c.want) {
			t.Errorf("%q: exit %d: %s; want %q", c.args, code, errOut, c.want)
		}
	}
	if code, _, errOut := runCLI(t, "get", "-h"); code != exitOK || !strings.Contains(errOut, "Exit status: 0 found, 3 not found") {
		t.Errorf("get -h: exit %d: %s", code, errOut)
	}
}
