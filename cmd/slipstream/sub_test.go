package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

func TestSub(t *testing.T) {
	mi := startMsgInstance(t)
	sub := runMsgBackground(t, "sub", "-url", mi.url, "-id", "sub-1", "-tags", "orders,eu")
	// The signal handler is installed before this line is printed.
	msgWaitFor(t, "sub says it is subscribed", func() bool { return strings.Contains(sub.stderr.String(), "subscribed to ") })
	for i := range 2 {
		if code, _, errOut := runCLI(t, "pub", "-url", mi.url, "-target", "orders", "-key", fmt.Sprint("o", i), "-value", fmt.Sprint(i)); code != exitOK {
			t.Fatalf("pub: %s", errOut)
		}
	}
	msgWaitFor(t, "sub prints both messages", func() bool { return strings.Count(sub.stdout.String(), "\n") == 2 })
	// Both are acknowledged: nothing waits for sub-1 any more.
	msgWaitFor(t, "sub-1's outbox is empty", func() bool { n, err := mi.in.Store().CountOutbox("sub-1"); return err == nil && n == 0 })
	p, err := os.FindProcess(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if code := sub.wait(t); code != exitOK {
		t.Fatalf("sub after SIGINT: exit %d: %s", code, sub.stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(sub.stdout.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], `{"type":"SK"`) || !strings.Contains(lines[0], `"key":"o0"`) || !strings.Contains(lines[1], `"key":"o1"`) {
		t.Fatalf("sub printed:\n%s", sub.stdout.String())
	}
	if !strings.Contains(sub.stderr.String(), `as link "sub-1" (tags orders,eu)`) || !strings.Contains(sub.stderr.String(), "received 2 messages") {
		t.Errorf("sub stderr:\n%s", sub.stderr.String())
	}

	// -n stops after N; -no-ack leaves the message pending: it comes again.
	if code, _, errOut := runCLI(t, "pub", "-url", mi.url, "-target", "orders", "-key", "again", "-value", "1"); code != exitOK {
		t.Fatalf("pub: %s", errOut)
	}
	for _, extra := range []string{"-no-ack", "-json"} {
		code, out, errOut := runCLI(t, "sub", "-url", mi.url, "-id", "sub-1", "-tags", "orders", "-n", "1", "-timeout", "20s", extra)
		if code != exitOK || strings.Count(out, "\n") != 1 || !strings.Contains(out, `"key":"again"`) {
			t.Fatalf("sub -n 1 %s: exit %d: %s %s", extra, code, out, errOut)
		}
		if extra == "-no-ack" {
			if n, err := mi.in.Store().CountOutbox("sub-1"); err != nil || n != 1 {
				t.Fatalf("after sub -no-ack the outbox of sub-1 holds %d (%v), want 1", n, err)
			}
		}
	}

	// Fewer than -n within -timeout is a failure; without -n it is the end.
	code, _, errOut := runCLI(t, "sub", "-url", mi.url, "-n", "3", "-timeout", "300ms")
	if code != exitError || !strings.Contains(errOut, "received 0 of the 3 messages asked for within 300ms") {
		t.Fatalf("sub -n 3 -timeout: exit %d: %s", code, errOut)
	}
	if code, _, errOut := runCLI(t, "sub", "-url", mi.url, "-timeout", "300ms"); code != exitOK || !strings.Contains(errOut, "received 0 messages") {
		t.Fatalf("sub -timeout: exit %d: %s", code, errOut)
	}
	if code, _, errOut := runCLI(t, "sub", "-url", mi.url, "-n", "-1"); code != exitUsage {
		t.Fatalf("sub -n -1: exit %d: %s", code, errOut)
	}
	if code, _, errOut := runCLI(t, "sub", "-url", "ws://127.0.0.1:1/ws"); code != exitError || !strings.Contains(errOut, "is the instance running?") {
		t.Fatalf("sub from an unreachable URL: exit %d: %s", code, errOut)
	}
}
