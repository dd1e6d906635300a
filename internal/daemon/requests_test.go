package daemon_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// Issue 4's promises across a real triangle: state converges whatever the
// order, gets are answered by the targeted environment and the reply comes
// back hop by hop, and commands run where they are targeted, only for links
// allowed to issue them.

// replyClient is a raw client that ACKs deliveries and keeps every frame.
type replyClient struct {
	*meshClient
	frames chan *slipstream.Message
}

// newReplyClient is a meshClient whose non-data frames (replies, ERR) are
// also handed to frames.
func newReplyClient(t *testing.T, url, id string, tags ...string) *replyClient {
	t.Helper()
	frames := make(chan *slipstream.Message, 1024)
	c := &replyClient{meshClient: &meshClient{id: id, ws: hello(t, url, id, tags...), acked: map[string]int{},
		done: make(chan struct{}), other: frames}, frames: frames}
	go c.read()
	t.Cleanup(c.close)
	return c
}

// replies collects the frames answering id (replies and ERR) that arrive
// within d.
func (c *replyClient) replies(id string, d time.Duration) []*slipstream.Message {
	var out []*slipstream.Message
	deadline := time.After(d)
	for {
		select {
		case m := <-c.frames:
			if m.InReplyTo == id || (m.Type == slipstream.TypeERR && m.MessageID == id) {
				out = append(out, m)
			}
		case <-deadline:
			return out
		}
	}
}

// byOrigin indexes replies by answering instance.
func byOrigin(rs []*slipstream.Message) map[string]*slipstream.Message {
	out := map[string]*slipstream.Message{}
	for _, r := range rs {
		out[r.OriginInstanceID] = r
	}
	return out
}

func (m *mesh) triangle() {
	m.linked("aws-1", "azure-1")
	m.linked("aws-1", "gcp-1")
	m.linked("azure-1", "gcp-1")
}

// Random SK/SA/SW/delete operations issued concurrently by clients of all
// three instances, on a few keys, with timestamps that often tie, leave the
// three instances' state identical and equal to the last-writer-wins choice.
func TestMeshStateConverges(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("SLIPSTREAM_SEED"); v != "" {
		seed, _ = strconv.ParseUint(v, 10, 64)
	}
	t.Logf("seed %d (rerun with SLIPSTREAM_SEED=%d)", seed, seed)
	m := newMesh(t, triangleTags, "aws-1>azure-1", "azure-1>gcp-1", "gcp-1>aws-1")
	m.triangle()
	ids := []string{"aws-1", "azure-1", "gcp-1"}
	clients := map[string]*meshClient{}
	for _, id := range ids {
		clients[id] = newMeshClient(t, m.ins[id], "app-"+id)
	}
	keys := []string{"k1", "k2", "k3", "k4", "k5"}
	const perClient = 150
	base := time.Now().UnixMilli()
	var wg sync.WaitGroup
	published := map[string][]string{}
	var pmu sync.Mutex
	for n, id := range ids {
		rng := rand.New(rand.NewPCG(seed, uint64(n)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[id]
			var mine []string
			for i := range perClient {
				key := keys[rng.IntN(len(keys))]
				mid := fmt.Sprintf("%s-%03d", id, i)
				ts := base + int64(rng.IntN(40)) // ties across instances
				var frame string
				switch rng.IntN(4) {
				case 0:
					frame = fmt.Sprintf(`{"type":"SK","messageId":%q,"timestamp":%d,"key":%q,"value":{"by":%q,"i":%d}}`, mid, ts, key, id, i)
				case 1:
					frame = fmt.Sprintf(`{"type":"SK","messageId":%q,"timestamp":%d,"key":%q,"value":null}`, mid, ts, key)
				case 2:
					frame = fmt.Sprintf(`{"type":"SA","messageId":%q,"timestamp":%d,"key":%q,"value":[%q,%d]}`, mid, ts, key, id, i)
				default:
					frame = fmt.Sprintf(`{"type":"SW","messageId":%q,"timestamp":%d,"key":%q,"value":{"a":%d,"b":0.5}}`, mid, ts, key, i)
				}
				if err := c.write([]byte(frame)); err != nil {
					t.Errorf("%s: %v", id, err)
					return
				}
				mine = append(mine, mid)
			}
			pmu.Lock()
			published[id] = mine
			pmu.Unlock()
		}()
	}
	wg.Wait()
	for _, id := range ids {
		clients[id].waitAcked(t, published[id])
	}
	dump := func(id string) []store.StateEntry {
		es, err := m.ins[id].Store().States("", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		return es
	}
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		a := dump("aws-1")
		for _, id := range ids[1:] {
			if b := dump(id); !reflect.DeepEqual(a, b) {
				return fmt.Errorf("aws-1 and %s differ:\n%s\n%s", id, describe(a), describe(b))
			}
		}
		if len(a) != len(keys) {
			return fmt.Errorf("%d keys, want %d", len(a), len(keys))
		}
		return nil
	})
	if t.Failed() {
		t.Logf("seed %d", seed)
	}
}

func describe(es []store.StateEntry) string {
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "  %s=%s by %s@%d/%s deleted=%v\n", e.Key, e.Value, e.MessageID, e.Timestamp, e.Origin, e.Deleted)
	}
	return b.String()
}

// A GK targeted at another environment is answered by that environment's
// instance and the reply reaches the asking client; a missing key answers
// found:false; a get nobody answers leaves the client waiting, without an
// error or a broken connection; an untargeted get is answered by everyone.
func TestMeshGetsAcrossTheMesh(t *testing.T) {
	m := newMesh(t, triangleTags, "aws-1>azure-1", "aws-1>gcp-1", "azure-1>gcp-1")
	m.triangle()
	writer := newMeshClient(t, m.ins["aws-1"], "writer")
	// Set a value only in azure (targeted) and one everywhere.
	ids := []string{"w1", "w2", "w3"}
	for _, f := range []string{
		`{"type":"SK","messageId":"w1","key":"order:1","value":{"status":"paid"},"targetedTags":["azure"]}`,
		`{"type":"SW","messageId":"w2","key":"split","value":{"acq-a":70,"acq-b":30}}`,
		`{"type":"SA","messageId":"w3","key":"list","value":[1,2,3]}`,
	} {
		if err := writer.write([]byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	writer.waitAcked(t, ids)
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for _, id := range []string{"aws-1", "azure-1", "gcp-1"} {
			if r, _ := m.ins[id].Store().State("list"); r == nil {
				return fmt.Errorf("%s has no list yet", id)
			}
		}
		if r, _ := m.ins["azure-1"].Store().State("order:1"); r == nil {
			return fmt.Errorf("azure-1 has no order:1 yet")
		}
		return nil
	})
	if r, _ := m.ins["aws-1"].Store().State("order:1"); r != nil {
		t.Fatalf("aws-1 applied an SK targeted at azure: %+v", r)
	}

	asker := newReplyClient(t, m.ins["aws-1"].url, "asker")
	send := func(f string) {
		t.Helper()
		if err := asker.write([]byte(f)); err != nil {
			t.Fatal(err)
		}
	}

	send(`{"type":"GK","messageId":"q1","key":"order:1","targetedTags":["azure"]}`)
	rs := asker.replies("q1", 1500*time.Millisecond)
	if len(rs) != 1 || rs[0].OriginInstanceID != "azure-1" || rs[0].Found == nil || !*rs[0].Found ||
		string(rs[0].Value) != `{"status":"paid"}` || rs[0].Type != slipstream.TypeGK {
		t.Fatalf("replies to q1: %s, want one from azure-1 with the value", frames(rs))
	}

	send(`{"type":"GK","messageId":"q2","key":"no-such-key","targetedTags":["gcp"]}`)
	rs = asker.replies("q2", 1500*time.Millisecond)
	if len(rs) != 1 || rs[0].OriginInstanceID != "gcp-1" || rs[0].Found == nil || *rs[0].Found || rs[0].Value != nil {
		t.Fatalf("replies to q2: %s, want one found:false from gcp-1", frames(rs))
	}

	send(`{"type":"GW","messageId":"q3","key":"split"}`)
	rs = asker.replies("q3", 1500*time.Millisecond)
	got := byOrigin(rs)
	if len(rs) != 3 || len(got) != 3 {
		t.Fatalf("replies to an untargeted GW: %s, want one from each instance", frames(rs))
	}
	for id, r := range got {
		if r.Found == nil || !*r.Found || string(r.Value) != `{"acq-a":70,"acq-b":30}` || r.Type != slipstream.TypeGW {
			t.Errorf("GW reply from %s: %s", id, slipstream.Encode(r))
		}
	}

	send(`{"type":"GA","messageId":"q4","key":"split","targetedTags":["aws"]}`)
	rs = asker.replies("q4", 1500*time.Millisecond)
	if len(rs) != 1 || rs[0].Found == nil || *rs[0].Found || !strings.Contains(rs[0].Error, "set by SW") {
		t.Fatalf("GA on an SW key: %s, want found:false with an error naming SW", frames(rs))
	}

	// Nobody carries the tag: no reply, no ERR; the connection still serves.
	send(`{"type":"GK","messageId":"q5","key":"order:1","targetedTags":["nowhere"]}`)
	if rs := asker.replies("q5", 700*time.Millisecond); len(rs) != 0 {
		t.Fatalf("a get nobody answers got %s", frames(rs))
	}
	send(`{"type":"GK","messageId":"q6","key":"list","targetedTags":["aws"]}`)
	if rs := asker.replies("q6", 1500*time.Millisecond); len(rs) != 1 || string(rs[0].Value) != "[1,2,3]" {
		t.Fatalf("the connection does not serve after an unanswered get: %s", frames(rs))
	}

	// The admin API shows the same value.
	body := adminGet(t, m.ins["azure-1"].AdminAddr(), "/v1/state/order:1", http.StatusOK)
	var sv struct {
		Key, Type        string
		Value            json.RawMessage
		OriginInstanceID string `json:"originInstanceId"`
	}
	if err := json.Unmarshal(body, &sv); err != nil || sv.Type != "SK" || string(sv.Value) != `{"status":"paid"}` || sv.OriginInstanceID != "writer" {
		t.Fatalf("GET /v1/state/order:1 = %s (%v)", body, err)
	}
	adminGet(t, m.ins["aws-1"].AdminAddr(), "/v1/state/order:1", http.StatusNotFound)
	if body := adminGet(t, m.ins["gcp-1"].AdminAddr(), "/v1/state?prefix=s&limit=5", http.StatusOK); !strings.Contains(string(body), `"key":"split"`) {
		t.Fatalf("GET /v1/state?prefix=s = %s", body)
	}
}

func frames(ms []*slipstream.Message) string {
	var b strings.Builder
	for _, m := range ms {
		b.Write(slipstream.Encode(m))
		b.WriteByte('\n')
	}
	if b.Len() == 0 {
		return "(none)"
	}
	return b.String()
}

func adminGet(t *testing.T, addr, path string, want int) []byte {
	t.Helper()
	res, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != want {
		t.Fatalf("GET %s: %d %s, want %d", path, res.StatusCode, body, want)
	}
	return body
}

// An allowed slipstream.set_log_level changes the level on every targeted
// instance, and each answers; the same command from a link without
// permission is refused with ERR forbidden and changes nothing; an
// application command reaches the targeted clients exactly once, and their
// reply comes back to the sender.
func TestMeshCommands(t *testing.T) {
	m := newMeshWith(t, true, triangleTags, "aws-1>azure-1", "azure-1>gcp-1", "gcp-1>aws-1")
	m.triangle()
	levels := func() map[string]slog.Level {
		out := map[string]slog.Level{}
		for id, in := range m.ins {
			out[id] = in.LogLevel()
		}
		return out
	}
	before := levels()
	for id, l := range before {
		if l != slog.LevelWarn {
			t.Fatalf("%s starts at %v, want warn (the test config)", id, l)
		}
	}

	// Refused: the ingress listener does not allow commands.
	plain := newReplyClient(t, m.ins["aws-1"].url, "plain")
	plain.write([]byte(`{"type":"CMD","messageId":"c0","command":"slipstream.set_log_level","args":{"level":"debug"}}`))
	rs := plain.replies("c0", time.Second)
	if len(rs) != 1 || rs[0].Type != slipstream.TypeERR || rs[0].Code != slipstream.CodeForbidden {
		t.Fatalf("a command from a link without permission: %s, want one ERR forbidden", frames(rs))
	}
	if got := levels(); !reflect.DeepEqual(got, before) {
		t.Fatalf("levels changed by a refused command: %v", got)
	}
	if n, _ := m.ins["aws-1"].Store().CountOutbox("azure-1"); n != 0 {
		t.Fatalf("a refused command was stored for azure-1")
	}

	// Allowed: the ops listener.
	opsAddr := m.ins["aws-1"].Source("websocket_server.ops").(interface{ Addr() net.Addr }).Addr().String()
	ops := newReplyClient(t, "ws://"+opsAddr+"/ws", "ops")
	ops.write([]byte(`{"type":"CMD","messageId":"c1","command":"slipstream.set_log_level","args":{"level":"debug"},"targetedTags":["azure","gcp"]}`))
	ops.waitAcked(t, []string{"c1"})
	rs = ops.replies("c1", 1500*time.Millisecond)
	got := byOrigin(rs)
	if len(rs) != 2 || got["azure-1"] == nil || got["gcp-1"] == nil {
		t.Fatalf("replies to set_log_level targeted at azure and gcp: %s, want one from each", frames(rs))
	}
	for id, r := range got {
		if r.Error != "" || !strings.Contains(string(r.Result), `"level":"debug"`) {
			t.Errorf("reply from %s: %s", id, slipstream.Encode(r))
		}
	}
	want := map[string]slog.Level{"aws-1": slog.LevelWarn, "azure-1": slog.LevelDebug, "gcp-1": slog.LevelDebug}
	if l := levels(); !reflect.DeepEqual(l, want) {
		t.Fatalf("levels %v, want %v", l, want)
	}

	// Everyone, and a bad argument answered with an error by each.
	ops.write([]byte(`{"type":"CMD","messageId":"c2","command":"slipstream.set_log_level","args":{"level":"loud"}}`))
	rs = ops.replies("c2", 1500*time.Millisecond)
	if len(byOrigin(rs)) != 3 {
		t.Fatalf("replies to an untargeted command: %s, want one from each of 3", frames(rs))
	}
	for _, r := range rs {
		if !strings.Contains(r.Error, "unknown log level") {
			t.Errorf("reply to a bad level: %s", slipstream.Encode(r))
		}
	}
	ops.write([]byte(`{"type":"CMD","messageId":"cs","command":"slipstream.stats","targetedTags":["gcp"]}`))
	rs = ops.replies("cs", 1500*time.Millisecond)
	if len(rs) != 1 || rs[0].OriginInstanceID != "gcp-1" || !strings.Contains(string(rs[0].Result), `"id":"gcp-1"`) ||
		!strings.Contains(string(rs[0].Result), `"pipelines"`) || !strings.Contains(string(rs[0].Result), `"log_level":"debug"`) {
		t.Fatalf("stats from gcp-1: %s", frames(rs))
	}
	ops.write([]byte(`{"type":"CMD","messageId":"c3","command":"slipstream.ping"}`))
	if rs := ops.replies("c3", 1500*time.Millisecond); len(byOrigin(rs)) != 3 {
		t.Fatalf("ping: %s, want a pong from each instance", frames(rs))
	}

	// An application command, targeted: delivered to azure's clients once,
	// not to gcp's nor to instances; the client's reply comes back.
	billing := newReplyClient(t, m.ins["azure-1"].url, "billing", "azure")
	other := newReplyClient(t, m.ins["gcp-1"].url, "other", "gcp")
	ops.write([]byte(`{"type":"CMD","messageId":"c4","command":"reload-prices","args":{"region":"eu"},"targetedTags":["azure"]}`))
	ops.waitAcked(t, []string{"c4"})
	billing.expectExactly(t, []string{"c4"})
	other.expectExactly(t, nil)
	counts, _ := billing.deliveries()
	if counts["c4"] != 1 {
		t.Fatalf("billing got c4 %d times", counts["c4"])
	}
	billing.write([]byte(`{"type":"CMD","messageId":"r4","inReplyTo":"c4","result":{"reloaded":12}}`))
	rs = ops.replies("c4", 1500*time.Millisecond)
	if len(rs) != 1 || rs[0].OriginInstanceID != "billing" || string(rs[0].Result) != `{"reloaded":12}` {
		t.Fatalf("the client's reply to c4: %s, want it back at ops", frames(rs))
	}
}
