package daemon_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/daemon"
)

// GET /v1/tap streams the envelopes leaving a stage as JSON lines; unknown
// stages and a missing stage parameter are JSON errors.
func TestTap(t *testing.T) {
	in := startInstance(t, instanceHCL("tap-1", t.TempDir(), ""))
	if code, body := adminDo(t, in, "GET", "/v1/tap", "", ""); code != 400 {
		t.Errorf("no stage: %d %s", code, body)
	}
	if code, body := adminDo(t, in, "GET", "/v1/tap?stage=nope", "", ""); code != 404 || !contains(body, "sync/persist") {
		t.Errorf("unknown stage: %d %s", code, body)
	}
	if code, body := adminDo(t, in, "GET", "/v1/tap?stage=persist&pipeline=other", "", ""); code != 404 {
		t.Errorf("unknown pipeline: %d %s", code, body)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+in.AdminAddr()+"/v1/tap?stage=tag_filter&pipeline=sync", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("tap: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	lines := make(chan daemon.TapEvent, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var ev daemon.TapEvent
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				lines <- ev
			}
		}
	}()

	// The handler attached its tap before the headers went out.
	pub := hello(t, in.url, "pub")
	sub := hello(t, in.url, "sub")
	pub.sendString(sk("tap-1", "k", `"v"`))
	if m := pub.next(); m.Type != slipstream.TypeACK {
		t.Fatalf("got %s", slipstream.Encode(m))
	}
	sub.ack(sub.next())
	for {
		select {
		case ev, ok := <-lines:
			if !ok {
				t.Fatal("the tap stream ended before the message")
			}
			if ev.MessageID != "tap-1" {
				continue // the HELLOs and ACKs pass too
			}
			if ev.Stage != "tag_filter" || ev.Pipeline != "sync" || ev.Link != "pub" || ev.Type != "SK" || ev.Key != "k" ||
				len(ev.Recipients) != 1 || ev.Recipients[0] != "sub" || ev.Status != "accepted" {
				t.Errorf("tap event = %+v", ev)
			}
			return
		case <-ctx.Done():
			t.Fatal("no tap line for the message within 10s")
		}
	}
}
