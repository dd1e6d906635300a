package daemon_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/daemon"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The admin listener serves /healthz, /readyz and /metrics with per-stage
// counters; log.messages writes one line per message.
func TestAdminHealthMetricsAndMessageLog(t *testing.T) {
	logs := &testutil.SyncBuffer{}
	hcl := strings.Replace(instanceHCL("local-1", t.TempDir(), ""), `level = "warn"`, "level = \"info\"\n  messages = true", 1)
	in := startInstanceWith(t, hcl, daemon.Options{LogOutput: logs})
	admin := "http://" + in.AdminAddr()

	if code, body := get(t, admin+"/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	code, body := get(t, admin+"/readyz")
	var ready struct {
		Ready  bool `json:"ready"`
		Checks []struct {
			Name string `json:"name"`
			OK   bool   `json:"ok"`
		} `json:"checks"`
	}
	if err := json.Unmarshal([]byte(body), &ready); err != nil || code != 200 || !ready.Ready || len(ready.Checks) < 2 {
		t.Errorf("/readyz = %d %s", code, body)
	}

	pub := hello(t, in.url, "pub")
	sub := hello(t, in.url, "sub")
	pub.sendString(sk("obs-1", "k", "1"))
	if m := pub.next(); m.Type != slipstream.TypeACK {
		t.Fatalf("got %s", slipstream.Encode(m))
	}
	sub.ack(sub.next())
	pub.sendString(sk("obs-1", "k", "1")) // a duplicate
	pub.next()
	pub.sendString(`{"type":"SK"`) // rejected
	pub.next()

	// Counters are updated as envelopes leave each stage, which may be just
	// after the ACK went out: poll.
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		_, metrics := get(t, admin+"/metrics")
		for _, want := range []string{
			// The SK and the subscriber's ACK frame (every envelope counts).
			`slipstream_stage_messages_total{outcome="passed",pipeline="sync",stage="persist"} 2`,
			`slipstream_stage_messages_total{outcome="duplicate",pipeline="sync",stage="dedup"} 1`,
			`slipstream_stage_messages_total{outcome="rejected",pipeline="sync",stage="decode"} 1`,
			`slipstream_stage_batch_seconds_bucket{pipeline="sync",stage="persist"`,
			`slipstream_link_deliveries_total{kind="client",outcome="acked"} 1`,
		} {
			if !strings.Contains(metrics, want) {
				return fmt.Errorf("/metrics lacks %s:\n%s", want, grepLines(metrics, "stage=\"persist\""))
			}
		}
		return nil
	})
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		l := logs.String()
		for _, want := range []string{`"msg":"message"`, `"messageId":"obs-1"`, `"outcome":"duplicate"`, `"outcome":"rejected"`, `"outcome":"accepted"`} {
			if !strings.Contains(l, want) {
				return fmt.Errorf("the message log lacks %s:\n%s", want, l)
			}
		}
		return nil
	})
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
