package daemon_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

const adminToken = "s3cret-token"

// dlqHCL is the test instance with an admin token and a sink that gives up
// quickly: two ack timeouts of 100ms and a delivery is dead-lettered.
func dlqHCL(t *testing.T) string {
	hcl := instanceHCL("local-1", t.TempDir(), "")
	for old, new := range map[string]string{
		`listen = "127.0.0.1:0"` + "\n}": `listen = "127.0.0.1:0"` + "\n  token = \"" + adminToken + "\"\n}",
		`ack_timeout  = "300ms"`:         `ack_timeout  = "100ms"`,
		`max_attempts = 5`:               `max_attempts = 2`,
	} {
		if !strings.Contains(hcl, old) {
			t.Fatalf("instanceHCL changed: %q not found", old)
		}
		hcl = strings.Replace(hcl, old, new, 1)
	}
	return hcl
}

// call makes an admin API request and returns the status and body.
func call(t *testing.T, method, url, token, body string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

type dlqList struct {
	DeadLetters []store.DeadLetter `json:"deadLetters"`
	More        bool               `json:"more"`
}

func listDLQ(t *testing.T, base, query string) dlqList {
	t.Helper()
	code, b := call(t, "GET", base+"/v1/dlq"+query, adminToken, "")
	if code != http.StatusOK {
		t.Fatalf("GET /v1/dlq%s: %d %s", query, code, b)
	}
	var l dlqList
	if err := json.Unmarshal(b, &l); err != nil {
		t.Fatalf("GET /v1/dlq: %v: %s", err, b)
	}
	return l
}

func messageID(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	m, err := slipstream.Decode(raw, slipstream.DefaultLimits())
	if err != nil {
		t.Fatalf("dead letter message %s: %v", raw, err)
	}
	return m.MessageID
}

// wantJSON checks a status and that the body holds want.
func wantJSON(t *testing.T, what string, code int, body []byte, wantCode int, want string) {
	t.Helper()
	if code != wantCode || !bytes.Contains(body, []byte(want)) {
		t.Fatalf("%s: %d %s, want %d with %s", what, code, body, wantCode, want)
	}
}

// Deliveries a client never acknowledges are dead-lettered; the admin API
// lists them, replays them to the connected client (which now gets and ACKs
// them) and purges them; every /v1 route wants the token.
func TestDLQListReplayPurge(t *testing.T) {
	in := startInstance(t, dlqHCL(t))
	base := "http://" + in.AdminAddr()
	sub := hello(t, in.url, "sub-1")
	pub := hello(t, in.url, "pub")
	for _, id := range []string{"d1", "d2", "d3"} {
		pub.sendString(sk(id, "k", `"v"`))
		if m := pub.next(); m.Type != slipstream.TypeACK || m.MessageID != id {
			t.Fatalf("publish %s: %s", id, slipstream.Encode(m))
		}
	}
	// Two attempts each, never acknowledged.
	for range 6 {
		sub.next()
	}

	var dl dlqList
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if dl = listDLQ(t, base, "?link=sub-1"); len(dl.DeadLetters) != 3 {
			return fmt.Errorf("%d dead letters, want 3", len(dl.DeadLetters))
		}
		return nil
	})
	for i, d := range dl.DeadLetters {
		if d.Link != "sub-1" || d.Reason != "no ACK after 2 attempts" || d.Attempts != 2 || d.At.IsZero() ||
			messageID(t, d.Message) != fmt.Sprintf("d%d", i+1) {
			t.Fatalf("dead letter %d = %+v", i, d)
		}
	}
	if n, _ := in.Store().CountOutbox("sub-1"); n != 0 {
		t.Fatalf("%d entries left in the outbox", n)
	}
	if l := listDLQ(t, base, "?limit=2"); len(l.DeadLetters) != 2 || !l.More {
		t.Fatalf("limit=2: %d dead letters, more=%v", len(l.DeadLetters), l.More)
	}
	if l := listDLQ(t, base, "?link=nobody"); len(l.DeadLetters) != 0 || l.More {
		t.Fatalf("link=nobody: %+v", l)
	}

	// The token guards every /v1 route, reads included; probes stay open.
	code, b := call(t, "GET", base+"/v1/dlq", "", "")
	wantJSON(t, "GET without token", code, b, http.StatusUnauthorized, `"error"`)
	code, b = call(t, "POST", base+"/v1/dlq/replay", "wrong", `{}`)
	wantJSON(t, "replay with a wrong token", code, b, http.StatusUnauthorized, "admin token")
	code, b = call(t, "DELETE", base+"/v1/dlq", "", "")
	wantJSON(t, "DELETE without token", code, b, http.StatusUnauthorized, `"error"`)
	code, b = call(t, "GET", base+"/metrics", "", "")
	for _, name := range []string{"slipstream_store_bytes{part=\"lsm\"}", "slipstream_store_gc_runs_total",
		"slipstream_outbox_depth{link=\"sub-1\"} 0", `slipstream_link_deliveries_total{kind="client",outcome="dead_lettered"} 3`} {
		wantJSON(t, "GET /metrics", code, b, http.StatusOK, name)
	}

	// Replay one: the connected client receives it at once, under a new seq.
	seq2 := dl.DeadLetters[1].Seq
	code, b = call(t, "POST", base+"/v1/dlq/replay", adminToken, fmt.Sprintf(`{"link":"sub-1","seqs":[%d]}`, seq2))
	wantJSON(t, "replay d2", code, b, http.StatusOK, `{"replayed":1}`)
	m := sub.next()
	if m.MessageID != "d2" {
		t.Fatalf("after replay got %s, want d2", slipstream.Encode(m))
	}
	sub.ack(m)
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if n, _ := in.Store().CountOutbox("sub-1"); n != 0 {
			return fmt.Errorf("%d entries in the outbox after the ACK", n)
		}
		return nil
	})
	if l := listDLQ(t, base, ""); len(l.DeadLetters) != 2 {
		t.Fatalf("%d dead letters after replaying one, want 2", len(l.DeadLetters))
	}
	code, b = call(t, "POST", base+"/v1/dlq/replay", adminToken, fmt.Sprintf(`{"link":"sub-1","seqs":[%d]}`, seq2))
	wantJSON(t, "replay d2 again", code, b, http.StatusNotFound, fmt.Sprintf("no dead letter with seq %d", seq2))

	// A dead letter of a link this instance does not know blocks a replay
	// of everything, naming the link; it can be purged.
	if err := in.Store().MoveToDLQ("ghost", 7, []byte(sk("g1", "k", "1")), "no ACK after 2 attempts", 2); err != nil {
		t.Fatal(err)
	}
	code, b = call(t, "POST", base+"/v1/dlq/replay", adminToken, ``)
	wantJSON(t, "replay all with a ghost", code, b, http.StatusConflict, `cannot replay to link \"ghost\" (1 dead letters)`)
	if l := listDLQ(t, base, ""); len(l.DeadLetters) != 3 {
		t.Fatalf("a refused replay changed the dead letters: %d left", len(l.DeadLetters))
	}

	// Replay the rest of sub-1: in order, after each other.
	code, b = call(t, "POST", base+"/v1/dlq/replay", adminToken, `{"link":"sub-1"}`)
	wantJSON(t, "replay sub-1", code, b, http.StatusOK, `{"replayed":2}`)
	var got []string
	for range 2 {
		m := sub.next()
		got = append(got, m.MessageID)
		sub.ack(m)
	}
	if !slices.Equal(got, []string{"d1", "d3"}) {
		t.Fatalf("replayed deliveries %v, want d1 d3", got)
	}
	sub.expectNone(400 * time.Millisecond) // acknowledged: not sent again

	// Bad requests.
	for _, tc := range []struct{ method, path, body, want string }{
		{"POST", "/v1/dlq/replay", `{"seqs":[1]}`, "seqs need a link"},
		{"POST", "/v1/dlq/replay", `{"link":"sub-1","seq":[1]}`, "unknown field"},
		{"POST", "/v1/dlq/purge", `[`, "must be JSON"},
		{"GET", "/v1/dlq?limit=lots", ``, "limit must be"},
		{"DELETE", "/v1/dlq?link=ghost&seq=x", ``, "seq must be"},
	} {
		code, b := call(t, tc.method, base+tc.path, adminToken, tc.body)
		wantJSON(t, tc.method+" "+tc.path+" "+tc.body, code, b, http.StatusBadRequest, tc.want)
	}

	// Purge: by seq, then everything.
	code, b = call(t, "POST", base+"/v1/dlq/purge", adminToken, `{"link":"ghost","seqs":[8]}`)
	wantJSON(t, "purge a missing seq", code, b, http.StatusNotFound, "no dead letter")
	code, b = call(t, "DELETE", base+"/v1/dlq?link=ghost&seq=7", adminToken, "")
	wantJSON(t, "purge ghost 7", code, b, http.StatusOK, `{"purged":1}`)
	if err := in.Store().MoveToDLQ("ghost", 9, []byte(sk("g2", "k", "1")), "x", 1); err != nil {
		t.Fatal(err)
	}
	code, b = call(t, "POST", base+"/v1/dlq/purge", adminToken, `{}`)
	wantJSON(t, "purge all", code, b, http.StatusOK, `{"purged":1}`)
	if l := listDLQ(t, base, ""); len(l.DeadLetters) != 0 {
		t.Fatalf("%d dead letters after purging all", len(l.DeadLetters))
	}
}

// Without a token configured, the /v1 routes are open.
func TestDLQWithoutToken(t *testing.T) {
	in := startInstance(t, instanceHCL("local-1", t.TempDir(), ""))
	code, b := call(t, "GET", "http://"+in.AdminAddr()+"/v1/dlq", "", "")
	wantJSON(t, "GET /v1/dlq", code, b, http.StatusOK, `{"deadLetters":[],"more":false}`)
}
