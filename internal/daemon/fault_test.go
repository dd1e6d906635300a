package daemon_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/daemon"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// Faults between in-process instances: a faultProxy (proxy_test.go) sits on
// the path of a peer link. Only one side dials (A has a peer block for B
// whose url is the proxy; B has none and attaches A's inbound HELLO to its
// peer link "A"), so every byte of the link crosses the proxy. Heartbeats
// and redials are short so that the tests are fast.

// faultHeartbeat is the heartbeat of both ends of a link in these tests.
const faultHeartbeat = `interval = "100ms"
    timeout  = "500ms"`

// faultPeer is a peer block: the peer's id and the url to dial it by.
type faultPeer struct {
	id, url string
}

// faultHCL is an instance with a websocket_server on listen, a
// websocket_client with one peer block per peer (if any), the heartbeat hb
// on both, short redials, and a websocket sink that never dead-letters.
func faultHCL(id, dir, listen, hb string, peers ...faultPeer) string {
	client, ref := "", ""
	if len(peers) > 0 {
		var pb strings.Builder
		for _, p := range peers {
			fmt.Fprintf(&pb, "  peer %q {\n    url  = %q\n    tags = [%q]\n  }\n", p.id, p.url, p.id)
		}
		client = fmt.Sprintf(`
source "websocket_client" "peers" {
%s  retry {
    interval     = "50ms"
    max_interval = "200ms"
    attempts     = 0
    cooldown     = "1s"
  }
  heartbeat {
    %s
  }
}
`, pb.String(), hb)
		ref = ", source.websocket_client.peers"
	}
	return fmt.Sprintf(`
instance {
  id            = %q
  cluster_group = %q
  tags          = ["local"]
  data_dir      = %q
}
admin {
  listen = "127.0.0.1:0"
}
log {
  level = "info"
}
source "websocket_server" "ingress" {
  listen       = %q
  default_tags = ["local"]
  heartbeat {
    %s
  }
}
%s
pipeline "sync" {
  sources = [source.websocket_server.ingress%s]
  stage "decode" {}
  stage "loop_check" {}
  stage "dedup" {
    window = "1h"
  }
  stage "tag_filter" {}
  stage "persist" {}
  stage "ack" {}
  stage "fanout" {}
  sinks = [sink.websocket.links]
}
sink "websocket" "links" {
  ack_timeout  = "1s"
  max_attempts = 0
}
`, id, id, dir, listen, hb, client, ref)
}

// faultInstance is an in-process instance whose logs are kept and shown
// when the test fails.
type faultInstance struct {
	*testInstance
	id   string
	addr string // host:port of its websocket_server
	logs *testutil.SyncBuffer
}

func startFaultInstance(t *testing.T, id, hb string, peers ...faultPeer) *faultInstance {
	t.Helper()
	return startFaultInstanceHCL(t, id, faultHCL(id, t.TempDir(), "127.0.0.1:0", hb, peers...))
}

// startFaultInstanceHCL starts instance id from hcl, keeping its logs.
func startFaultInstanceHCL(t *testing.T, id, hcl string) *faultInstance {
	t.Helper()
	logs := &testutil.SyncBuffer{}
	in := startInstanceWith(t, hcl, daemon.Options{LogOutput: logs})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs of %s:\n%s", id, logs.String())
		}
	})
	return &faultInstance{testInstance: in, id: id, addr: strings.TrimSuffix(strings.TrimPrefix(in.url, "ws://"), "/ws"), logs: logs}
}

// viaProxy is the peer block for dialling target through p.
func viaProxy(target *faultInstance, p *faultProxy) faultPeer {
	return faultPeer{id: target.id, url: "ws://" + p.Addr() + "/ws"}
}

// faultLinked waits until the peer link between a and b is up at both ends.
func faultLinked(t *testing.T, a, b *faultInstance) {
	t.Helper()
	testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		la, lb := a.Links().Get(b.id), b.Links().Get(a.id)
		if la == nil || lb == nil || !la.Connected() || !lb.Connected() || !la.IsPeer() || !lb.IsPeer() {
			return fmt.Errorf("%s and %s are not linked", a.id, b.id)
		}
		return nil
	})
}

// faultCounter sums the samples of counter name whose labels include want.
func faultCounter(t *testing.T, in *faultInstance, name string, want map[string]string) float64 {
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
	metrics:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue metrics
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// faultClient is a raw client that records when it sent each message, when
// each delivery arrived (and ACKs it at once), and the ACKs it got.
type faultClient struct {
	id  string
	ws  *wsClient
	wmu sync.Mutex

	mu     sync.Mutex
	sentAt map[string]time.Time
	got    []string    // deliveries, in arrival order
	gotAt  []time.Time // their arrival times
	acked  map[string]bool
	done   chan struct{}
}

func newFaultClient(t *testing.T, in *faultInstance, id string) *faultClient {
	t.Helper()
	c := &faultClient{id: id, ws: hello(t, in.url, id), sentAt: map[string]time.Time{}, acked: map[string]bool{}, done: make(chan struct{})}
	go c.read()
	t.Cleanup(func() { c.ws.close(); <-c.done })
	return c
}

func (c *faultClient) read() {
	defer close(c.done)
	for b := range c.ws.in {
		now := time.Now()
		m, err := slipstream.Decode(b, slipstream.DefaultLimits())
		if err != nil {
			continue
		}
		switch {
		case m.Type == slipstream.TypeACK:
			c.mu.Lock()
			c.acked[m.MessageID] = true
			c.mu.Unlock()
		case m.Type.IsData():
			c.mu.Lock()
			c.got = append(c.got, m.MessageID)
			c.gotAt = append(c.gotAt, now)
			c.mu.Unlock()
			_ = c.write(slipstream.Encode(&slipstream.Message{Type: slipstream.TypeACK, MessageID: m.MessageID, ClusterGroupID: m.ClusterGroupID}))
		}
	}
}

func (c *faultClient) write(frame []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.ws.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return c.ws.conn.WriteMessage(websocket.TextMessage, frame)
}

// faultID names message i of a stream.
func faultID(i int) string { return fmt.Sprintf("m-%04d", i) }

// publishOne sends SK faultID(i) and records when.
func (c *faultClient) publishOne(t *testing.T, i int) string {
	t.Helper()
	id := faultID(i)
	c.mu.Lock()
	c.sentAt[id] = time.Now()
	c.mu.Unlock()
	if err := c.write([]byte(sk(id, "key:"+c.id, fmt.Sprint(i)))); err != nil {
		t.Fatalf("%s publish %s: %v", c.id, id, err)
	}
	return id
}

// publish sends SKs from..to-1 as fast as the connection takes them.
func (c *faultClient) publish(t *testing.T, from, to int) []string {
	t.Helper()
	ids := make([]string, 0, to-from)
	for i := from; i < to; i++ {
		ids = append(ids, c.publishOne(t, i))
	}
	return ids
}

// publishPaced sends SKs from..to-1, one every gap.
func (c *faultClient) publishPaced(t *testing.T, from, to int, gap time.Duration) []string {
	t.Helper()
	tick := time.NewTicker(gap)
	defer tick.Stop()
	ids := make([]string, 0, to-from)
	for i := from; i < to; i++ {
		if i > from {
			<-tick.C
		}
		ids = append(ids, c.publishOne(t, i))
	}
	return ids
}

// waitAcked waits until the instance ACKed every id (it is stored there).
func (c *faultClient) waitAcked(t *testing.T, ids []string) {
	t.Helper()
	testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, id := range ids {
			if !c.acked[id] {
				return fmt.Errorf("%s: %s not ACKed", c.id, id)
			}
		}
		return nil
	})
}

// received returns the deliveries so far, in arrival order.
func (c *faultClient) received() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.got)
}

// waitGot waits until every id arrived at least once.
func (c *faultClient) waitGot(t *testing.T, ids []string, timeout time.Duration) {
	t.Helper()
	testutil.CheckFor(t, timeout, 5*time.Millisecond, func() error {
		have := map[string]bool{}
		for _, id := range c.received() {
			have[id] = true
		}
		missing := 0
		for _, id := range ids {
			if !have[id] {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%s misses %d of %d messages", c.id, missing, len(ids))
		}
		return nil
	})
}

// expectExactlyInOrder waits until every id of want arrived, waits a
// little more for stray copies, and then requires the deliveries to be
// exactly want: each once, in that order, nothing else.
func (c *faultClient) expectExactlyInOrder(t *testing.T, want []string, timeout time.Duration) {
	t.Helper()
	c.waitGot(t, want, timeout)
	// Watch a little longer for stray copies (a retransmission by the
	// dialling instance that B's dedup let through would arrive about as
	// fast as the original).
	settle := time.Now().Add(300 * time.Millisecond)
	testutil.CheckFor(t, time.Second, 20*time.Millisecond, func() error {
		if time.Now().Before(settle) {
			return errNotYet
		}
		return nil
	})
	got := c.received()
	if slices.Equal(got, want) {
		return
	}
	counts := map[string]int{}
	for _, id := range got {
		counts[id]++
	}
	for id, n := range counts {
		if n > 1 {
			t.Errorf("%s got %s %d times", c.id, id, n)
		}
	}
	prev := ""
	for _, id := range got {
		if id < prev {
			t.Errorf("%s got %s after %s: out of order", c.id, id, prev)
			break
		}
		prev = id
	}
	t.Fatalf("%s got %d deliveries, want exactly the %d published, in order", c.id, len(got), len(want))
}

// noneOf fails if c received any of ids.
func (c *faultClient) noneOf(t *testing.T, ids []string, when string) {
	t.Helper()
	for _, id := range c.received() {
		if slices.Contains(ids, id) {
			t.Fatalf("%s got %s %s", c.id, id, when)
		}
	}
}

// faultLatencies returns the time from publication (at pub) to arrival (at c)
// of the first delivery of each id, sorted.
func faultLatencies(t *testing.T, pub, c *faultClient, ids []string) []time.Duration {
	t.Helper()
	pub.mu.Lock()
	defer pub.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	first := map[string]time.Time{}
	for i, id := range c.got {
		if _, ok := first[id]; !ok {
			first[id] = c.gotAt[i]
		}
	}
	out := make([]time.Duration, 0, len(ids))
	for _, id := range ids {
		at, ok := first[id]
		if !ok {
			t.Fatalf("%s never got %s", c.id, id)
		}
		out = append(out, at.Sub(pub.sentAt[id]))
	}
	slices.Sort(out)
	return out
}

func faultPct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// faultPair starts B (no peers) and A dialling B through a new proxy.
func faultPair(t *testing.T, hb string) (a, b *faultInstance, p *faultProxy) {
	t.Helper()
	b = startFaultInstance(t, "fault-b", hb)
	p = newFaultProxy(t, b.addr)
	a = startFaultInstance(t, "fault-a", hb, viaProxy(b, p))
	faultLinked(t, a, b)
	return a, b, p
}

var faultOKConnects = map[string]string{"peer": "fault-b", "outcome": "ok"}

// (a) The link is cut in the middle of a stream: what is published during
// the cut waits in A's outbox, A redials until the proxy lets it through,
// and B's client gets the whole stream once, in order.
func TestFaultCut(t *testing.T) {
	start := time.Now()
	a, b, p := faultPair(t, faultHeartbeat)
	sub := newFaultClient(t, b, "sub-b")
	pub := newFaultClient(t, a, "pub-a")

	const n = 300
	before := pub.publish(t, 0, 100)
	sub.waitGot(t, before[:20], 10*time.Second) // cut while the stream flows
	okBefore := faultCounter(t, a, "slipstream_peer_connects_total", faultOKConnects)
	p.Cut()
	during := pub.publish(t, 100, 200)
	pub.waitAcked(t, append(slices.Clone(before), during...))
	// A keeps redialling and the proxy keeps refusing.
	testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if _, refused, _ := p.Stats(); refused < 3 {
			return fmt.Errorf("%d dials refused", refused)
		}
		return nil
	})
	if l := a.Links().Get("fault-b"); l.Connected() {
		t.Fatal("A still has B's link up while it is cut")
	}
	sub.noneOf(t, during, "while the link was cut")
	if ok := faultCounter(t, a, "slipstream_peer_connects_total", faultOKConnects); ok != okBefore {
		t.Fatalf("%v successful connects to B through a cut proxy", ok-okBefore)
	}

	p.Heal()
	faultLinked(t, a, b)
	after := pub.publish(t, 200, n)
	pub.waitAcked(t, after)
	all := slices.Concat(before, during, after)
	sub.expectExactlyInOrder(t, all, 15*time.Second)

	if ok := faultCounter(t, a, "slipstream_peer_connects_total", faultOKConnects); ok < okBefore+1 {
		t.Fatalf("%v successful connects to B, want at least %v (a redial after the cut)", ok, okBefore+1)
	}
	acc, refused, _ := p.Stats()
	t.Logf("%d messages in order, once; proxy accepted %d connections, refused %d; dups dropped at B: %v; took %s",
		n, acc, refused, faultCounter(t, b, "slipstream_stage_messages_total", map[string]string{"outcome": "duplicate"}),
		time.Since(start).Round(time.Millisecond))
}

// (b) The link is stalled (a black hole: no byte passes, nothing is
// closed). A's heartbeat detects it within its timeout, A redials (the
// dial hangs in the black hole), and after Unstall the backlog flows, in
// order, once.
func TestFaultStall(t *testing.T) {
	start := time.Now()
	a, b, p := faultPair(t, faultHeartbeat)
	sub := newFaultClient(t, b, "sub-b")
	pub := newFaultClient(t, a, "pub-a")

	warm := pub.publish(t, 0, 50)
	sub.waitGot(t, warm, 10*time.Second)
	timeouts := func() float64 {
		return faultCounter(t, a, "slipstream_peer_heartbeat_timeouts_total", map[string]string{"peer": "fault-b"})
	}
	// Spurious timeouts before the stall would be a bug of their own, but
	// count from here so that a loaded machine does not confuse the test.
	to0, ok0 := timeouts(), faultCounter(t, a, "slipstream_peer_connects_total", faultOKConnects)
	if to0 != 0 {
		t.Logf("warning: %v heartbeat timeouts before the stall", to0)
	}

	stalledAt := time.Now()
	p.Stall()
	during := pub.publish(t, 50, 150)
	pub.waitAcked(t, during)
	// Detection: only the heartbeat can tell (the proxy closes nothing).
	const timeout, margin = 500 * time.Millisecond, 2 * time.Second
	testutil.CheckFor(t, timeout+margin, 5*time.Millisecond, func() error {
		if timeouts() <= to0 {
			return fmt.Errorf("no heartbeat timeout after %s", time.Since(stalledAt).Round(time.Millisecond))
		}
		return nil
	})
	detected := time.Since(stalledAt)
	// A redials: its new connection is accepted by the proxy, and hangs.
	testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if acc, _, _ := p.Stats(); acc < 2 {
			return fmt.Errorf("%d connections accepted by the proxy", acc)
		}
		return nil
	})
	later := pub.publish(t, 150, 250)
	pub.waitAcked(t, later)
	sub.noneOf(t, slices.Concat(during, later), "while the link was stalled")

	p.Unstall()
	sub.expectExactlyInOrder(t, slices.Concat(warm, during, later), 15*time.Second)
	if ok := faultCounter(t, a, "slipstream_peer_connects_total", faultOKConnects); ok < ok0+1 {
		t.Fatalf("%v successful connects to B, want at least %v (a redial after the heartbeat timeout)", ok, ok0+1)
	}
	acc, _, _ := p.Stats()
	t.Logf("stall detected after %s; proxy accepted %d connections; 250 messages in order, once; took %s",
		detected.Round(time.Millisecond), acc, time.Since(start).Round(time.Millisecond))
}

// (c) A has two peers, B and C, each behind its own proxy. B's link is
// stalled: messages published on A keep reaching C as fast as before the
// stall (no head-of-line blocking behind B), B gets everything once the
// stall ends.
//
// The heartbeat timeout is 3s here (interval 100ms), not 500ms: the stall's
// measurement window (~600ms of publishing) then lies entirely before A can
// notice that B is dead, so a C that waited on B would show latencies of
// seconds, far beyond the bound.
func TestFaultStalledPeerDoesNotDelayOthers(t *testing.T) {
	start := time.Now()
	const hb = `interval = "100ms"
    timeout  = "3s"`
	b := startFaultInstance(t, "fault-b", hb)
	c := startFaultInstance(t, "fault-c", hb)
	pb, pc := newFaultProxy(t, b.addr), newFaultProxy(t, c.addr)
	a := startFaultInstance(t, "fault-a", hb, viaProxy(b, pb), viaProxy(c, pc))
	faultLinked(t, a, b)
	faultLinked(t, a, c)
	subB, subC := newFaultClient(t, b, "sub-b"), newFaultClient(t, c, "sub-c")
	pub := newFaultClient(t, a, "pub-a")

	const gap = 2 * time.Millisecond
	// Baseline: both links healthy.
	warm := pub.publishPaced(t, 0, 50, gap)
	subC.waitGot(t, warm, 10*time.Second)
	subB.waitGot(t, warm, 10*time.Second)
	base := faultLatencies(t, pub, subC, warm)
	timeoutsB := func() float64 {
		return faultCounter(t, a, "slipstream_peer_heartbeat_timeouts_total", map[string]string{"peer": "fault-b"})
	}
	toB := timeoutsB()

	stalledAt := time.Now()
	pb.Stall()
	// More messages during the stall than the sink's window (256): B's
	// writer fills its window and waits for ACKs that do not come.
	during := pub.publishPaced(t, 50, 350, gap)
	published := time.Since(stalledAt)
	subC.waitGot(t, during, 5*time.Second)
	stalled := faultLatencies(t, pub, subC, during)
	if timeoutsB() != toB {
		t.Fatalf("A noticed B's stall before C got the messages: the measurement is not inside the stall")
	}
	subB.noneOf(t, during, "while its link was stalled")

	bound := max(10*faultPct(base, 0.5), 200*time.Millisecond)
	t.Logf("latency at C: baseline p50 %s p90 %s max %s; during B's stall p50 %s p90 %s max %s (bound on p50 %s; %d messages published in %s)",
		faultPct(base, 0.5), faultPct(base, 0.9), base[len(base)-1], faultPct(stalled, 0.5), faultPct(stalled, 0.9), stalled[len(stalled)-1],
		bound, len(during), published.Round(time.Millisecond))
	if p50 := faultPct(stalled, 0.5); p50 > bound {
		t.Fatalf("C's p50 latency while B is stalled is %s, more than %s (baseline p50 %s)", p50, bound, faultPct(base, 0.5))
	}

	// B's link: the heartbeat ends it, A redials, and after the stall B
	// gets everything, in order, once.
	testutil.CheckFor(t, 6*time.Second, 5*time.Millisecond, func() error {
		if timeoutsB() <= toB {
			return errNotYet
		}
		return nil
	})
	pb.Unstall()
	all := slices.Concat(warm, during)
	subB.expectExactlyInOrder(t, all, 15*time.Second)
	subC.expectExactlyInOrder(t, all, 5*time.Second)
	if to := faultCounter(t, a, "slipstream_peer_heartbeat_timeouts_total", map[string]string{"peer": "fault-c"}); to != 0 {
		t.Fatalf("C's link timed out %v times", to)
	}
	t.Logf("took %s", time.Since(start).Round(time.Millisecond))
}

// (d) A slow link (50ms each way per chunk): everything arrives, in order,
// once.
func TestFaultSlowLink(t *testing.T) {
	start := time.Now()
	a, b, p := faultPair(t, faultHeartbeat)
	sub := newFaultClient(t, b, "sub-b")
	pub := newFaultClient(t, a, "pub-a")
	warm := pub.publish(t, 0, 10)
	sub.waitGot(t, warm, 10*time.Second)

	const delay = 50 * time.Millisecond
	p.SetDelay(delay)
	const n = 300
	ids := pub.publish(t, 10, n)
	pub.waitAcked(t, ids)
	all := slices.Concat(warm, ids)
	sub.expectExactlyInOrder(t, all, 15*time.Second)
	lat := faultLatencies(t, pub, sub, ids)
	if lat[0] < delay {
		t.Fatalf("a message crossed the slow link in %s, less than its delay %s", lat[0], delay)
	}
	// A slow link is a live link: its pongs come back within the timeout.
	// (Not asserted: a loaded machine may starve a heartbeat, and the
	// messages would still arrive once, in order, which is the point.)
	t.Logf("%d messages over a %s link: latency min %s p50 %s max %s; connects %v, heartbeat timeouts %v; took %s", n, delay,
		lat[0], faultPct(lat, 0.5), lat[len(lat)-1], faultCounter(t, a, "slipstream_peer_connects_total", faultOKConnects),
		faultCounter(t, a, "slipstream_peer_heartbeat_timeouts_total", map[string]string{"peer": "fault-b"}),
		time.Since(start).Round(time.Millisecond))
}

// (e) Flapping: fifteen rounds of a cut, a stall (until the heartbeat
// fires) or a 20ms delay, each with a stream published across it. The
// whole stream arrives once, in order.
func TestFaultFlapping(t *testing.T) {
	start := time.Now()
	a, b, p := faultPair(t, faultHeartbeat)
	sub := newFaultClient(t, b, "sub-b")
	pub := newFaultClient(t, a, "pub-a")
	timeouts := func() float64 {
		return faultCounter(t, a, "slipstream_peer_heartbeat_timeouts_total", map[string]string{"peer": "fault-b"})
	}
	var all []string
	k := 0
	for r := range 15 {
		all = append(all, pub.publish(t, k, k+200)...)
		k += 200
		sub.waitGot(t, all[len(all)-100:len(all)-90], 10*time.Second) // the fault hits a flowing stream
		to := timeouts()
		switch r % 3 {
		case 0:
			p.Cut()
		case 1:
			p.Stall()
		case 2:
			p.SetDelay(20 * time.Millisecond)
		}
		all = append(all, pub.publish(t, k, k+100)...)
		k += 100
		pub.waitAcked(t, all)
		if r%3 == 1 {
			testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
				if timeouts() <= to {
					return errNotYet
				}
				return nil
			})
		}
		p.Heal()
		p.Unstall()
		p.SetDelay(0)
	}
	sub.expectExactlyInOrder(t, all, 30*time.Second)
	acc, refused, _ := p.Stats()
	t.Logf("%d messages in order, once, across 15 faults; connects %v, heartbeat timeouts %v, proxy accepted %d refused %d; took %s",
		len(all), faultCounter(t, a, "slipstream_peer_connects_total", faultOKConnects), timeouts(), acc, refused,
		time.Since(start).Round(time.Millisecond))
}

// isDialed reports whether c is a connection its instance dialled.
func isDialed(c any) bool {
	d, ok := c.(interface{ Dialed() bool })
	return ok && d.Dialed()
}

// (f) Both ends dial, each through its own proxy. The link runs on the
// connection dialled by the lower id (A). When A's path stalls, the
// heartbeat ends that connection, B's own connection (through the other,
// healthy proxy) takes over and the stream flows on during the stall.
// After the stall A's connection wins the tie-break again.
func TestFaultStallMutualFailover(t *testing.T) {
	start := time.Now()
	portA, portB := testutil.FreePort(t), testutil.FreePort(t)
	pAB := newFaultProxy(t, fmt.Sprintf("127.0.0.1:%d", portB)) // A dials B through it
	pBA := newFaultProxy(t, fmt.Sprintf("127.0.0.1:%d", portA)) // B dials A through it
	a := startFaultInstanceHCL(t, "mut-a", faultHCL("mut-a", t.TempDir(), fmt.Sprintf("127.0.0.1:%d", portA), faultHeartbeat,
		faultPeer{id: "mut-b", url: "ws://" + pAB.Addr() + "/ws"}))
	b := startFaultInstanceHCL(t, "mut-b", faultHCL("mut-b", t.TempDir(), fmt.Sprintf("127.0.0.1:%d", portB), faultHeartbeat,
		faultPeer{id: "mut-a", url: "ws://" + pBA.Addr() + "/ws"}))
	// on waits until both ends hold the same connection, dialled by A
	// (byA) or by B.
	on := func(byA bool) {
		t.Helper()
		testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
			ca, cb := a.Links().Get("mut-b").Conn(), b.Links().Get("mut-a").Conn()
			if ca == nil || cb == nil || isDialed(ca) != byA || isDialed(cb) != !byA {
				return fmt.Errorf("the link is not on the connection dialled by %s", map[bool]string{true: "A", false: "B"}[byA])
			}
			return nil
		})
	}
	on(true)
	sub := newFaultClient(t, b, "sub-b")
	pub := newFaultClient(t, a, "pub-a")
	warm := pub.publish(t, 0, 50)
	sub.waitGot(t, warm, 10*time.Second)

	pAB.Stall()
	stalledAt := time.Now()
	during := pub.publish(t, 50, 150)
	pub.waitAcked(t, during)
	sub.waitGot(t, during, 10*time.Second)
	failover := time.Since(stalledAt)
	on(false)
	if failover > 5*time.Second {
		t.Fatalf("the stream resumed over B's connection only after %s", failover)
	}

	pAB.Unstall()
	on(true)
	after := pub.publish(t, 150, 250)
	sub.expectExactlyInOrder(t, slices.Concat(warm, during, after), 10*time.Second)
	t.Logf("stream resumed over B's connection %s after the stall of A's; back on A's after Unstall; connects A->B %v, B->A %v; took %s",
		failover.Round(time.Millisecond), faultCounter(t, a, "slipstream_peer_connects_total", map[string]string{"outcome": "ok"}),
		faultCounter(t, b, "slipstream_peer_connects_total", map[string]string{"outcome": "ok"}), time.Since(start).Round(time.Millisecond))
}
