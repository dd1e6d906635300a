package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/slipstream-sync/slipstream/internal/daemon"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/pipeline"
)

const testToken = "cli-token"

// startDLQInstance runs an in-process instance with an admin token and
// returns it with its admin URL and a stop function.
func startDLQInstance(t *testing.T) (*daemon.Instance, string, func()) {
	t.Helper()
	hcl := fmt.Sprintf(`
instance {
  id       = "cli-1"
  data_dir = %q
}
admin {
  listen = "127.0.0.1:0"
  token  = %q
}
log {
  level = "error"
}
source "websocket_server" "ingress" {
  listen = "127.0.0.1:0"
}
pipeline "sync" {
  sources = [source.websocket_server.ingress]
  stage "decode" {}
  stage "persist" {}
  stage "ack" {}
  stage "fanout" {}
  sinks = [sink.websocket.links]
}
sink "websocket" "links" {}
`, t.TempDir(), testToken)
	cfg, diags := pipeline.Load("cli.hcl", []byte(hcl))
	if diags.HasErrors() {
		t.Fatal(pipeline.FormatDiagnostics(diags))
	}
	in, err := daemon.New(cfg, daemon.Options{LogOutput: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx, context.Background()) }()
	return in, "http://" + in.AdminAddr(), func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("instance: %v", err)
		}
	}
}

// deadLetters makes n dead letters for link id (known to the instance when
// known), as the sink would after max_attempts, and returns their seqs.
func deadLetters(t *testing.T, in *daemon.Instance, id string, known bool, n int) []uint64 {
	t.Helper()
	var l *link.Link
	if known {
		var err error
		if l, err = in.Links().Ensure(link.Spec{ID: id, Acks: true}); err != nil {
			t.Fatal(err)
		}
	}
	var seqs []uint64
	for i := range n {
		seq := uint64(100 + i)
		if l != nil {
			seq = l.NextSeq()
		}
		frame := fmt.Sprintf(`{"type":"SK","messageId":"%s-m%d","clusterGroupId":"singleton","key":"k","value":%d}`, id, i, i)
		if err := in.Store().MoveToDLQ(id, seq, []byte(frame), "no ACK after 3 attempts", 3); err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	return seqs
}

func TestDLQCommands(t *testing.T) {
	defer goleak.VerifyNone(t)
	in, admin, stop := startDLQInstance(t)
	defer stop()
	subSeqs := deadLetters(t, in, "sub-1", true, 3)
	deadLetters(t, in, "sub-2", true, 1)

	// ls: a table, oldest first per link.
	code, out, errOut := runCLI(t, "dlq", "ls", "-admin", admin, "-token", testToken)
	if code != exitOK {
		t.Fatalf("dlq ls: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 {
		t.Fatalf("dlq ls printed %d lines, want a header and 4 rows:\n%s", len(lines), out)
	}
	if !regexp.MustCompile(`^LINK +SEQ +ATTEMPTS +AGE +TYPE +MESSAGE-ID +REASON$`).MatchString(lines[0]) {
		t.Errorf("header %q", lines[0])
	}
	row := regexp.MustCompile(fmt.Sprintf(`^sub-1 +%d +3 +\d+s +SK +sub-1-m0 +no ACK after 3 attempts$`, subSeqs[0]))
	if !row.MatchString(lines[1]) {
		t.Errorf("first row %q", lines[1])
	}
	if !strings.HasPrefix(lines[4], "sub-2 ") {
		t.Errorf("last row %q, want sub-2's", lines[4])
	}

	// The token may come from the environment; -link and -limit narrow.
	t.Setenv("SLIPSTREAM_ADMIN_TOKEN", testToken)
	code, out, _ = runCLI(t, "dlq", "ls", "-admin", strings.TrimPrefix(admin, "http://"), "-link", "sub-1", "-limit", "2")
	if code != exitOK || strings.Count(out, "sub-1 ") != 2 || !strings.Contains(out, "there are more") {
		t.Fatalf("dlq ls -link sub-1 -limit 2: exit %d:\n%s", code, out)
	}
	code, out, _ = runCLI(t, "dlq", "ls", "-admin", admin, "-json", "-link", "sub-2")
	var res struct {
		DeadLetters []struct {
			Link    string          `json:"link"`
			Message json.RawMessage `json:"message"`
		} `json:"deadLetters"`
	}
	if code != exitOK || json.Unmarshal([]byte(out), &res) != nil || len(res.DeadLetters) != 1 || res.DeadLetters[0].Link != "sub-2" {
		t.Fatalf("dlq ls -json: exit %d:\n%s", code, out)
	}

	// replay: SEQs after the flags or between them.
	code, out, errOut = runCLI(t, "dlq", "replay", fmt.Sprint(subSeqs[1]), "-admin", admin, "-link", "sub-1")
	if code != exitOK || out != "replayed 1 dead letter\n" {
		t.Fatalf("dlq replay SEQ: exit %d: %s%s", code, out, errOut)
	}
	if n, _ := in.Store().CountOutbox("sub-1"); n != 1 {
		t.Fatalf("outbox of sub-1 holds %d entries after the replay, want 1", n)
	}
	code, _, errOut = runCLI(t, "dlq", "replay", "-admin", admin, "-link", "sub-1", fmt.Sprint(subSeqs[1]))
	if code != exitError || !strings.Contains(errOut, "has no dead letter with seq") || !strings.Contains(errOut, "404") {
		t.Fatalf("replaying it again: exit %d: %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "dlq", "replay", "-admin", admin, "7")
	if code != exitUsage || !strings.Contains(errOut, "needs -link") {
		t.Fatalf("dlq replay SEQ without -link: exit %d: %s", code, errOut)
	}

	// A dead letter of a link the instance does not know blocks "replay all".
	deadLetters(t, in, "gone-1", false, 1)
	code, _, errOut = runCLI(t, "dlq", "replay", "-admin", admin)
	if code != exitError || !strings.Contains(errOut, `cannot replay to link "gone-1"`) || !strings.Contains(errOut, "409") {
		t.Fatalf("dlq replay with an unknown link: exit %d: %s", code, errOut)
	}
	code, out, _ = runCLI(t, "dlq", "replay", "-admin", admin, "-link", "sub-1")
	if code != exitOK || out != "replayed 2 dead letters\n" {
		t.Fatalf("dlq replay -link sub-1: exit %d: %s", code, out)
	}

	// purge: everything needs -yes.
	code, out, errOut = runCLI(t, "dlq", "purge", "-admin", admin, "-link", "gone-1")
	if code != exitUsage || out != "" || !strings.Contains(errOut, `every dead letter of link "gone-1"`) || !strings.Contains(errOut, "-yes") {
		t.Fatalf("dlq purge -link without -yes: exit %d: %s%s", code, out, errOut)
	}
	code, _, errOut = runCLI(t, "dlq", "purge", "-admin", admin)
	if code != exitUsage || !strings.Contains(errOut, "every dead letter of every link") {
		t.Fatalf("dlq purge without -yes: exit %d: %s", code, errOut)
	}
	code, out, _ = runCLI(t, "dlq", "purge", "-admin", admin, "-link", "gone-1", "100")
	if code != exitOK || out != "purged 1 dead letter\n" {
		t.Fatalf("dlq purge SEQ: exit %d: %s", code, out)
	}
	code, out, _ = runCLI(t, "dlq", "purge", "-admin", admin, "-yes")
	if code != exitOK || out != "purged 1 dead letter\n" { // sub-2's
		t.Fatalf("dlq purge -yes: exit %d: %s", code, out)
	}
	code, out, _ = runCLI(t, "dlq", "ls", "-admin", admin)
	if code != exitOK || out != "no dead letters\n" {
		t.Fatalf("dlq ls after purging: exit %d: %s", code, out)
	}
}

func TestDLQErrors(t *testing.T) {
	defer goleak.VerifyNone(t)
	t.Setenv("SLIPSTREAM_ADMIN_TOKEN", "")
	_, admin, stop := startDLQInstance(t)
	defer stop()

	code, _, errOut := runCLI(t, "dlq", "ls", "-admin", admin)
	if code != exitError || !strings.Contains(errOut, "wants the admin token: pass -token or set SLIPSTREAM_ADMIN_TOKEN") {
		t.Errorf("no token: exit %d: %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "dlq", "ls", "-admin", admin, "-token", "wrong")
	if code != exitError || !strings.Contains(errOut, "refused the token") {
		t.Errorf("wrong token: exit %d: %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "dlq", "ls", "-admin", "http://127.0.0.1:1")
	if code != exitError || !strings.Contains(errOut, "cannot reach the admin API at http://127.0.0.1:1: is the instance running? set -admin") {
		t.Errorf("unreachable: exit %d: %s", code, errOut)
	}
	for _, args := range [][]string{{"dlq"}, {"dlq", "nope"}, {"dlq", "ls", "extra"}, {"dlq", "ls", "-limit", "0"},
		{"dlq", "purge", "-link", "x", "seven"}, {"dlq", "ls", "-bogus"}} {
		if code, _, _ := runCLI(t, args...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, exitUsage)
		}
	}
	if code, out, _ := runCLI(t, "dlq", "-h"); code != exitOK || !strings.Contains(out, "slipstream dlq purge [-link ID] [SEQ...] [-yes]") {
		t.Errorf("dlq -h: exit %d: %s", code, out)
	}
	if code, _, _ := runCLI(t, "dlq", "ls", "-h"); code != exitOK {
		t.Errorf("dlq ls -h: exit %d", code)
	}
	if code, out, _ := runCLI(t, "help"); code != exitOK || !strings.Contains(out, "dlq ") {
		t.Errorf("usage does not list dlq: %s", out)
	}
}

func TestAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second: "0s", 42 * time.Second: "42s", 5 * time.Minute: "5m", 3 * time.Hour: "3h",
		47 * time.Hour: "47h", 72 * time.Hour: "3d",
	} {
		if got := age(d); got != want {
			t.Errorf("age(%s) = %s, want %s", d, got, want)
		}
	}
}
