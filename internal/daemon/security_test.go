package daemon_test

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/gorilla/websocket"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// Access controls of websocket_server against real instances and real
// WebSocket connections (docs/SECURITY.md).

// dialStatus dials url with header and returns the HTTP status of a refused
// upgrade (0 when the upgrade succeeded; the connection is then closed).
func dialStatus(t *testing.T, url string, header http.Header) int {
	t.Helper()
	conn, res, err := websocket.DefaultDialer.Dial(url, header)
	if err == nil {
		conn.Close()
		return 0
	}
	if res == nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	return res.StatusCode
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

func TestListenerTokens(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tokens")
	if err := os.WriteFile(file, []byte("# clients\nfile-tok-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	in := startInstance(t, instanceHCL("sec-1", filepath.Join(dir, "data"), fmt.Sprintf(`
  tokens     = ["s3cret"]
  token_file = %q`, file)))
	for _, c := range []struct {
		name   string
		url    string
		header http.Header
		want   int
	}{
		{"no token", in.url, nil, http.StatusUnauthorized},
		{"wrong token", in.url, bearer("guess"), http.StatusUnauthorized},
		{"not a bearer header", in.url, http.Header{"Authorization": {"Basic czNjcmV0"}}, http.StatusUnauthorized},
		{"token from the list", in.url, bearer("s3cret"), 0},
		{"token from the file", in.url, bearer("file-tok-1"), 0},
		{"token in the query (browsers)", in.url + "?token=s3cret", nil, 0},
	} {
		if got := dialStatus(t, c.url, c.header); got != c.want {
			t.Errorf("%s: status %d, want %d", c.name, got, c.want)
		}
	}
	// The file is re-read when it changes: rotation without a restart.
	time.Sleep(10 * time.Millisecond) // a distinct mtime on coarse clocks
	if err := os.WriteFile(file, []byte("file-tok-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := dialStatus(t, in.url, bearer("file-tok-2")); got != 0 {
		t.Errorf("the rotated token: status %d, want accepted", got)
	}
	if got := dialStatus(t, in.url, bearer("file-tok-1")); got != http.StatusUnauthorized {
		t.Errorf("the retired token: status %d, want 401", got)
	}
	// A token works for publishing, of course.
	conn, _, err := websocket.DefaultDialer.Dial(in.url, bearer("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.WriteMessage(websocket.TextMessage, []byte(sk("m1", "k", "1")))
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, b, err := conn.ReadMessage(); err != nil || !strings.Contains(string(b), `"type":"ACK"`) {
		t.Fatalf("publish with a token: %s %v", b, err)
	}
}

// Each refused case answers ERR forbidden, and nothing of it is stored
// (no dedup marker, no outbox entry) or delivered.
func TestListenerPermissions(t *testing.T) {
	dir := t.TempDir()
	in := startInstance(t, instanceHCL("sec-2", filepath.Join(dir, "data"), `
  permissions {
    publish = ["SK", "GK"]
    targets = ["payments"]
  }
  permission "ops" {
    commands = true
  }`))
	sub := hello(t, in.url, "sub", "payments")
	pub := hello(t, in.url, "pos-1")
	for _, c := range []struct {
		frame, id, want string
	}{
		{`{"type":"SK","messageId":"f1","key":"k","value":1}`, "f1", "must name targetedTags"},
		{`{"type":"SK","messageId":"f2","key":"k","value":1,"targetedTags":["other"]}`, "f2", `may not target tag "other"`},
		{`{"type":"SA","messageId":"f3","key":"k","value":[1],"targetedTags":["payments"]}`, "f3", "may not publish SA"},
		{`{"type":"CMD","messageId":"f4","command":"slipstream.ping","targetedTags":["payments"]}`, "f4", "allow_commands"},
	} {
		pub.sendString(c.frame)
		m := pub.next()
		if m.Type != slipstream.TypeERR || m.Code != slipstream.CodeForbidden || m.MessageID != c.id || !strings.Contains(m.Error, c.want) {
			t.Errorf("%s: answered %s, want ERR forbidden mentioning %q", c.frame, slipstream.Encode(m), c.want)
		}
		err := in.Store().DB().View(func(txn *badger.Txn) error {
			_, err := txn.Get(store.DedupKey("singleton", c.id))
			return err
		})
		if !errors.Is(err, badger.ErrKeyNotFound) {
			t.Errorf("%s: a refused message left a dedup marker (err %v)", c.id, err)
		}
	}
	if n, _ := in.Store().CountOutbox("sub"); n != 0 {
		t.Fatalf("refused messages are in sub's outbox: %d", n)
	}
	// What is allowed goes through.
	pub.sendString(`{"type":"SK","messageId":"ok1","key":"k","value":1,"targetedTags":["payments"]}`)
	if m := pub.next(); m.Type != slipstream.TypeACK || m.MessageID != "ok1" {
		t.Fatalf("allowed SK answered %s", slipstream.Encode(m))
	}
	if m := sub.next(); m.MessageID != "ok1" {
		t.Fatalf("sub got %s, want ok1 (and nothing refused before it)", slipstream.Encode(m))
	}
	// The ops link's own permission block: commands, and no other limit.
	ops := hello(t, in.url, "ops")
	ops.sendString(`{"type":"SA","messageId":"o1","key":"k2","value":[1]}`)
	if m := ops.next(); m.Type != slipstream.TypeACK {
		t.Fatalf("ops SA answered %s", slipstream.Encode(m))
	}
	if m := in.Store(); m == nil {
		t.Fatal("no store")
	}
	if n := metricValue(t, in, "slipstream_forbidden_total"); n != 4 {
		t.Errorf("slipstream_forbidden_total = %v, want 4", n)
	}
}

// metricValue sums every series of a counter or gauge of in.
func metricValue(t *testing.T, in *testInstance, name string) float64 {
	t.Helper()
	mfs, err := in.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// A flooding client is slowed, refused with ERR rate_limited and then cut
// off (1008), while another client of the same listener, within its rate,
// has every message accepted.
func TestListenerRateLimitFlood(t *testing.T) {
	dir := t.TempDir()
	in := startInstance(t, instanceHCL("sec-3", filepath.Join(dir, "data"), `
  limits {
    messages_per_second = 200
    burst               = "100ms"
    max_wait            = "2ms"
    close_after         = "2s"
  }`))
	flood, _, err := websocket.DefaultDialer.Dial(in.url+"?id=flood", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	var limited, acked atomic.Int64
	closed := make(chan error, 1)
	go func() {
		for {
			_, b, err := flood.ReadMessage()
			if err != nil {
				closed <- err
				return
			}
			switch {
			case strings.Contains(string(b), `"code":"rate_limited"`):
				limited.Add(1)
			case strings.Contains(string(b), `"type":"ACK"`):
				acked.Add(1)
			}
		}
	}()
	floodDone := make(chan struct{})
	go func() { // as fast as it can, for at most 15s or 200000 frames
		defer close(floodDone)
		deadline := time.Now().Add(15 * time.Second)
		for i := 0; i < 200000 && time.Now().Before(deadline); i++ {
			flood.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if flood.WriteMessage(websocket.TextMessage, []byte(sk(fmt.Sprintf("f-%d", i), "flood", "1", `"targetedTags":["void"]`))) != nil {
				return
			}
		}
	}()

	// Meanwhile a well-behaved client publishes 20 messages at 10/s.
	calm := hello(t, in.url, "calm")
	var rtts []time.Duration
	for i := range 20 {
		start := time.Now()
		calm.sendString(sk(fmt.Sprintf("c-%d", i), "calm", "1", `"targetedTags":["void"]`))
		m := calm.next()
		if m.Type != slipstream.TypeACK {
			t.Fatalf("calm client's message %d answered %s", i, slipstream.Encode(m))
		}
		rtts = append(rtts, time.Since(start))
		time.Sleep(100 * time.Millisecond)
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	t.Logf("calm client ACK round trips during the flood: p50 %v, max %v", rtts[len(rtts)/2], rtts[len(rtts)-1])

	select {
	case err := <-closed:
		// The close frame (1008) may be lost to a TCP reset: the flooder
		// is still sending when the instance closes the socket.
		var ce *websocket.CloseError
		if errors.As(err, &ce) && ce.Code != websocket.CloseAbnormalClosure &&
			(ce.Code != websocket.ClosePolicyViolation || !strings.Contains(ce.Text, "rate limit")) {
			t.Fatalf("the flooder was closed with %v, want 1008 rate limit", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the flooder was not cut off")
	}
	if l := in.Links().Get("flood"); l == nil || l.Connected() {
		t.Fatal("the flooder's link is still connected")
	}
	<-floodDone
	if limited.Load() == 0 || acked.Load() == 0 {
		t.Fatalf("flooder: %d ACKs, %d rate_limited; want both (slowed, then refused)", acked.Load(), limited.Load())
	}
	if metricValue(t, in, "slipstream_rate_limited_total") == 0 {
		t.Error("slipstream_rate_limited_total stayed 0")
	}
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if metricValue(t, in, "slipstream_rate_limit_closes_total") != 1 {
			return errors.New("slipstream_rate_limit_closes_total is not 1")
		}
		return nil
	})
}

func TestListenerConnectionLimitsOriginAndIdle(t *testing.T) {
	dir := t.TempDir()
	in := startInstance(t, instanceHCL("sec-4", filepath.Join(dir, "data"), `
  allowed_origins = ["https://app.example.com"]
  limits {
    max_connections_per_ip = 2
    idle_timeout           = "1s"
  }`))
	a := dial(t, in.url)
	b := dial(t, in.url)
	if got := dialStatus(t, in.url, nil); got != http.StatusTooManyRequests {
		t.Fatalf("a third connection from 127.0.0.1: status %d, want 429", got)
	}
	a.close()
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if got := dialStatus(t, in.url, nil); got != 0 {
			return fmt.Errorf("status %d", got)
		}
		return nil
	})
	// b sends nothing: closed for idleness with 1000.
	select {
	case _, ok := <-b.in:
		if ok {
			t.Fatal("idle connection got a frame")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an idle connection was not closed")
	}
	for _, c := range []struct {
		origin string
		want   int
	}{
		{"https://app.example.com", 0},
		{"https://evil.example.com", http.StatusForbidden},
	} {
		if got := dialStatus(t, in.url, http.Header{"Origin": {c.origin}}); got != c.want {
			t.Errorf("Origin %s: status %d, want %d", c.origin, got, c.want)
		}
	}
	if metricValue(t, in, "slipstream_connections_refused_total") < 2 {
		t.Error("refusals not counted")
	}
}
