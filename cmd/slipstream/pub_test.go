package main

import (
	"os"
	"strings"
	"testing"
)

func TestPub(t *testing.T) {
	mi := startMsgInstance(t)
	code, out, errOut := runCLI(t, "pub", "-url", mi.url, "-key", "k", "-value", "1", "-message-id", "pub-1")
	if code != exitOK || out != "ACK pub-1 (stored by cli-msg)\n" {
		t.Fatalf("pub SK: exit %d: %q %s", code, out, errOut)
	}
	code, out, errOut = runCLI(t, "pub", "-url", mi.url, "-type", "SA", "-key", "k", "-value", `{"not":"an array"}`)
	if code != exitError || out != "" || !strings.Contains(errOut, "the instance answered ERR invalid: SA value must be an array") {
		t.Fatalf("pub bad SA: exit %d: %q %s", code, out, errOut)
	}
	code, out, _ = runCLI(t, "pub", "-url", mi.url, "-type", "SA", "-key", "k", "-value", `3`, "-json")
	if code != exitError || !strings.HasPrefix(out, `{"type":"ERR"`) || !strings.Contains(out, `"code":"invalid"`) {
		t.Fatalf("pub bad SA -json: exit %d: %q", code, out)
	}

	// Requests print the ACK (commands) and every reply.
	code, out, errOut = runCLI(t, "pub", "-url", mi.url, "-command", "slipstream.ping", "-timeout", "500ms")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != exitOK || len(lines) != 2 || !strings.HasPrefix(lines[0], "ACK ") || !strings.HasPrefix(lines[1], `cli-msg  {"instanceId":"cli-msg","pong":true`) ||
		!strings.Contains(errOut, "1 reply within 500ms") {
		t.Fatalf("pub -command: exit %d: %q %s", code, out, errOut)
	}
	code, out, _ = runCLI(t, "pub", "-url", mi.url, "-type", "GK", "-key", "k", "-timeout", "500ms")
	if code != exitOK || out != "cli-msg  1\n" {
		t.Fatalf("pub -type GK: exit %d: %q", code, out)
	}

	// Raw frames, even invalid ones, and a script on stdin.
	code, out, _ = runCLI(t, "pub", "-url", mi.url, "-raw", `{"type":"SK","key":"k",`)
	if code != exitError || !strings.Contains(out, `{"type":"ERR"`) || !strings.Contains(out, `"code":"bad_json"`) {
		t.Fatalf("pub -raw invalid: exit %d: %q", code, out)
	}
	pubStdin = strings.NewReader(`{"type":"SK","key":"s","value":1,"messageId":"raw-1"}

{"type":"GK","key":"s","messageId":"raw-get"}
{"type":"NOPE"}
`)
	t.Cleanup(func() { pubStdin = os.Stdin })
	code, out, errOut = runCLI(t, "pub", "-url", mi.url, "-raw", "-", "-timeout", "500ms")
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if code != exitError || len(lines) != 3 || !strings.HasPrefix(lines[0], `{"type":"ACK","messageId":"raw-1"`) ||
		!strings.Contains(lines[1], `"inReplyTo":"raw-get"`) || !strings.HasPrefix(lines[2], `{"type":"ERR"`) ||
		!strings.Contains(errOut, "1 of 3 frames answered with ERR") {
		t.Fatalf("pub -raw -: exit %d:\n%s\n%s", code, out, errOut)
	}

	// Mistakes.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"pub", "-key", "k", "-value", "paid"}, `-value is not JSON`},
		{[]string{"pub", "-type", "ACK"}, `unknown -type "ACK"`},
		{[]string{"pub", "-type", "SK", "-command", "x"}, "-command and -args belong to CMD"},
		{[]string{"pub", "-raw", "{}", "-key", "k"}, "drop -key"},
		{[]string{"pub", "-command", "x", "-args", "{"}, "-args is not JSON"},
		{[]string{"pub", "extra"}, "pub takes no arguments"},
	} {
		code, _, errOut := runCLI(t, append(c.args, "-url", mi.url)...)
		if code != exitUsage || !strings.Contains(errOut, c.want) || !strings.Contains(errOut, "slipstream pub -h") {
			t.Errorf("%q: exit %d: %s; want %q", c.args, code, errOut, c.want)
		}
	}

	// A listener with tokens.
	code, _, errOut = runCLI(t, "pub", "-url", mi.secure, "-key", "k", "-value", "1", "-token", "")
	if code != exitError || !strings.Contains(errOut, "wants a token: pass -token or set SLIPSTREAM_TOKEN") {
		t.Fatalf("pub without a token: exit %d: %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "pub", "-url", mi.secure, "-key", "k", "-value", "1", "-token", "wrong")
	if code != exitError || !strings.Contains(errOut, "refused the token") {
		t.Fatalf("pub with a wrong token: exit %d: %s", code, errOut)
	}
	t.Setenv("SLIPSTREAM_TOKEN", "s3cret")
	if code, out, errOut := runCLI(t, "pub", "-url", mi.secure, "-key", "k", "-value", "1"); code != exitOK || !strings.HasPrefix(out, "ACK ") {
		t.Fatalf("pub with $SLIPSTREAM_TOKEN: exit %d: %s %s", code, out, errOut)
	}
}
