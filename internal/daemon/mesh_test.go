package daemon_test

import (
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/gorilla/websocket"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/testutil"
	"github.com/slipstream-sync/slipstream/sources"
)

// In-process meshes: whole instances with real Badger in temp dirs, linked
// by websocket_client peers on pre-picked loopback ports, and raw protocol
// clients. PROTOCOL.md "Routing, step by step" and "Example: a 3-instance
// triangle" are the specification.

// meshNode describes one instance of a mesh.
type meshNode struct {
	id    string
	tags  []string
	port  int
	dir   string
	peers []string // ids of the instances it dials
	// commands: peers and the extra "ops" listener may issue slipstream.*
	// commands (the "ingress" listener may not).
	commands bool
	inbound  []string // ids of the instances it declares as inbound_peer
}

// meshHCL is the instance's config: the default pipeline, the listener on
// its port, a websocket_client with one peer block per dialled instance
// (tags: that instance's tags) and fast redials.
func meshHCL(n meshNode, all map[string]meshNode) string {
	var peers strings.Builder
	for _, id := range n.peers {
		p := all[id]
		fmt.Fprintf(&peers, "  peer %q {\n    url  = \"ws://127.0.0.1:%d/ws\"\n    tags = %s\n    allow_commands = %v\n  }\n",
			id, p.port, hclList(p.tags), n.commands)
	}
	var inbound strings.Builder
	for _, id := range n.inbound {
		fmt.Fprintf(&inbound, "  inbound_peer %q {\n    tags = %s\n  }\n", id, hclList(all[id].tags))
	}
	client, ref := "", ""
	if n.commands {
		client = `
source "websocket_server" "ops" {
  listen         = "127.0.0.1:0"
  allow_commands = true
}
`
		ref = ", source.websocket_server.ops"
	}
	if len(n.peers) > 0 {
		client += fmt.Sprintf(`
source "websocket_client" "peers" {
%s  retry {
    interval     = "20ms"
    max_interval = "200ms"
    attempts     = 0
    cooldown     = "1s"
  }
  heartbeat {
    interval = "1s"
    timeout  = "5s"
  }
}
`, peers.String())
		ref += ", source.websocket_client.peers"
	}
	return fmt.Sprintf(`
instance {
  id            = %q
  cluster_group = %q
  tags          = %s
  data_dir      = %q
}
admin {
  listen = "127.0.0.1:0"
}
log {
  level = "warn"
}
source "websocket_server" "ingress" {
  listen       = "127.0.0.1:%d"
  default_tags = ["local"]
%s}
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
  stage "state" {}
  stage "command" {}
  stage "fanout" {}
  sinks = [sink.websocket.links]
}
sink "websocket" "links" {
  ack_timeout  = "2s"
  max_attempts = 0
}
`, n.id, n.id, hclList(n.tags), n.dir, n.port, inbound.String(), client, ref)
}

func hclList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// mesh is a set of running instances.
type mesh struct {
	t     *testing.T
	nodes map[string]meshNode
	ins   map[string]*testInstance
	held  map[string]net.Listener // ports reserved while their instance is down
}

// newMesh picks ports and data dirs for nodes and starts every instance.
// links lists who dials whom: "a>b" means a has a peer block for b.
func newMesh(t *testing.T, tags map[string][]string, links ...string) *mesh {
	t.Helper()
	return newMeshWith(t, false, tags, links...)
}

// newMeshWith is newMesh; commands sets meshNode.commands on every node.
func newMeshWith(t *testing.T, commands bool, tags map[string][]string, links ...string) *mesh {
	t.Helper()
	m := planMesh(t, commands, tags, links...)
	for id := range m.nodes {
		m.start(id)
	}
	return m
}

// planMesh is newMeshWith without starting any instance. In links, "a<b"
// also means that a declares b an inbound_peer (b dials a: write "b>a" too).
func planMesh(t *testing.T, commands bool, tags map[string][]string, links ...string) *mesh {
	t.Helper()
	m := &mesh{t: t, nodes: map[string]meshNode{}, ins: map[string]*testInstance{}, held: map[string]net.Listener{}}
	t.Cleanup(func() {
		for _, ln := range m.held {
			ln.Close()
		}
	})
	for id, tg := range tags {
		ln := testutil.ReservePort(t)
		m.held[id] = ln
		m.nodes[id] = meshNode{id: id, tags: tg, port: ln.Addr().(*net.TCPAddr).Port, dir: filepath.Join(t.TempDir(), id),
			commands: commands}
	}
	for _, l := range links {
		if host, dialler, in := strings.Cut(l, "<"); in {
			n, known := m.nodes[host]
			if _, dk := m.nodes[dialler]; !known || !dk {
				t.Fatalf("bad link %q", l)
			}
			n.inbound = append(n.inbound, dialler)
			m.nodes[host] = n
			continue
		}
		from, to, ok := strings.Cut(l, ">")
		if _, known := m.nodes[to]; !ok || !known {
			t.Fatalf("bad link %q", l)
		}
		n := m.nodes[from]
		n.peers = append(n.peers, to)
		m.nodes[from] = n
	}
	return m
}

// start (re)starts instance id on its port and data dir. The port stays
// bound until then, so that no outgoing connection takes it as its local
// port (the kernel skips bound ports when it picks one).
func (m *mesh) start(id string) *testInstance {
	m.t.Helper()
	if ln := m.held[id]; ln != nil {
		ln.Close()
		delete(m.held, id)
	}
	in := startInstance(m.t, meshHCL(m.nodes[id], m.nodes))
	m.ins[id] = in
	return in
}

// stop stops instance id and holds its port until the next start.
func (m *mesh) stop(id string) {
	m.t.Helper()
	m.ins[id].stop()
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", m.nodes[id].port))
	if err != nil {
		m.t.Fatalf("hold the port of %s: %v", id, err)
	}
	m.held[id] = ln
}

// linked waits until a and b are linked by exactly one connection: each
// has the other's link up, on the same TCP connection, dialled by the
// instance whose id sorts lower when both dial.
func (m *mesh) linked(a, b string) {
	m.t.Helper()
	testutil.CheckFor(m.t, 10*time.Second, 5*time.Millisecond, func() error {
		la, lb := m.ins[a].Links().Get(b), m.ins[b].Links().Get(a)
		if la == nil || lb == nil || la.Conn() == nil || lb.Conn() == nil {
			return fmt.Errorf("%s and %s are not linked", a, b)
		}
		ca, cb := la.Conn().(*sources.Conn), lb.Conn().(*sources.Conn)
		if ca.LocalAddr() != cb.RemoteAddr() || ca.Dialed() == cb.Dialed() {
			return fmt.Errorf("%s and %s hold different connections", a, b)
		}
		if slices.Contains(m.nodes[a].peers, b) && slices.Contains(m.nodes[b].peers, a) && ca.Dialed() != (a < b) {
			return fmt.Errorf("the link %s-%s is not on the connection dialled by the lower id", a, b)
		}
		if !la.IsPeer() || !lb.IsPeer() {
			return fmt.Errorf("the link %s-%s is not a peer link", a, b)
		}
		return nil
	})
}

// stageCount sums slipstream_stage_messages_total{stage,outcome} of
// instance id.
func (m *mesh) stageCount(id, stage, outcome string) float64 {
	m.t.Helper()
	mfs, err := m.ins[id].Metrics().Gather()
	if err != nil {
		m.t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "slipstream_stage_messages_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range mt.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["stage"] == stage && labels["outcome"] == outcome {
				sum += mt.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// meshClient is a raw client that ACKs every delivery from its own reader
// goroutine and records deliveries and ACKs.
type meshClient struct {
	id  string
	ws  *wsClient
	wmu sync.Mutex // one writer at a time on the connection

	mu    sync.Mutex
	got   []*slipstream.Message // deliveries, in arrival order
	acked map[string]int        // ACKs of what it published
	done  chan struct{}
	// other, when set, receives every other frame (replies, ERR).
	other chan *slipstream.Message
}

func newMeshClient(t *testing.T, in *testInstance, id string, tags ...string) *meshClient {
	t.Helper()
	c := &meshClient{id: id, ws: hello(t, in.url, id, tags...), acked: map[string]int{}, done: make(chan struct{})}
	go c.read()
	return c
}

func (c *meshClient) read() {
	defer close(c.done)
	for b := range c.ws.in {
		m, err := slipstream.Decode(b, slipstream.DefaultLimits())
		if err != nil {
			continue
		}
		switch {
		case m.Type == slipstream.TypeACK:
			c.mu.Lock()
			c.acked[m.MessageID]++
			c.mu.Unlock()
		case m.Type.IsData() && !m.IsReply():
			c.mu.Lock()
			c.got = append(c.got, m)
			c.mu.Unlock()
			c.write(slipstream.Encode(&slipstream.Message{Type: slipstream.TypeACK, MessageID: m.MessageID, ClusterGroupID: m.ClusterGroupID}))
		case c.other != nil:
			c.other <- m
		}
	}
}

func (c *meshClient) write(frame []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.ws.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return c.ws.conn.WriteMessage(websocket.TextMessage, frame)
}

// publish sends k SKs with ids <client>-000.. (extra fields appended).
func (c *meshClient) publish(t *testing.T, k int, extra ...string) []string {
	t.Helper()
	ids := make([]string, k)
	for i := range k {
		ids[i] = fmt.Sprintf("%s-%03d", c.id, i)
		if err := c.write([]byte(sk(ids[i], "key:"+c.id, fmt.Sprint(i), extra...))); err != nil {
			t.Fatalf("%s publish: %v", c.id, err)
		}
	}
	return ids
}

// close closes the connection and waits for the reader.
func (c *meshClient) close() {
	c.ws.close()
	<-c.done
}

// deliveries counts the deliveries by messageId, and returns the ids in
// arrival order.
func (c *meshClient) deliveries() (map[string]int, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	counts := map[string]int{}
	order := make([]string, 0, len(c.got))
	for _, m := range c.got {
		counts[m.MessageID]++
		order = append(order, m.MessageID)
	}
	return counts, order
}

// waitAcked waits until every id was ACKed.
func (c *meshClient) waitAcked(t *testing.T, ids []string) {
	t.Helper()
	testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, id := range ids {
			if c.acked[id] == 0 {
				return fmt.Errorf("%s: %s not ACKed", c.id, id)
			}
		}
		return nil
	})
}

// expectExactly waits until c got every id of want once, then checks for a
// while that nothing else (and nothing twice) arrives.
func (c *meshClient) expectExactly(t *testing.T, want []string) {
	t.Helper()
	testutil.CheckFor(t, 15*time.Second, 5*time.Millisecond, func() error {
		counts, _ := c.deliveries()
		missing := 0
		for _, id := range want {
			if counts[id] == 0 {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%s misses %d of %d messages", c.id, missing, len(want))
		}
		return nil
	})
	settle := time.Now().Add(300 * time.Millisecond)
	for {
		counts, _ := c.deliveries()
		for id, n := range counts {
			if !slices.Contains(want, id) {
				t.Fatalf("%s got %s, which it should not get", c.id, id)
			}
			if n > 1 {
				t.Fatalf("%s got %s %d times", c.id, id, n)
			}
		}
		if time.Now().After(settle) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var triangleTags = map[string][]string{"aws-1": {"aws"}, "azure-1": {"azure"}, "gcp-1": {"gcp"}}

// Every pair dials each other (the tie-break leaves one connection each);
// every client gets every other client's messages exactly once, and never
// its own; the copies the cycle produces are dropped as duplicates.
func TestMeshTriangleExactlyOnce(t *testing.T) {
	m := newMesh(t, triangleTags,
		"aws-1>azure-1", "aws-1>gcp-1", "azure-1>aws-1", "azure-1>gcp-1", "gcp-1>aws-1", "gcp-1>azure-1")
	ids := []string{"aws-1", "azure-1", "gcp-1"}
	m.linked("aws-1", "azure-1")
	m.linked("aws-1", "gcp-1")
	m.linked("azure-1", "gcp-1")
	for _, id := range ids {
		cl := m.ins[id].Source("websocket_client.peers").(*sources.Client)
		for _, p := range cl.Peers() {
			if s := cl.PeerState(p); s != sources.PeerConnected {
				t.Errorf("%s: peer %s is %q", id, p, s)
			}
		}
	}

	const k = 50
	clients := map[string]*meshClient{}
	for _, id := range ids {
		clients[id] = newMeshClient(t, m.ins[id], "c-"+id)
	}
	published := map[string][]string{}
	for _, id := range ids {
		published[id] = clients[id].publish(t, k)
	}
	for _, id := range ids {
		clients[id].waitAcked(t, published[id])
	}
	for _, id := range ids {
		var want []string
		for _, other := range ids {
			if other != id {
				want = append(want, published[other]...)
			}
		}
		clients[id].expectExactly(t, want)
	}

	dups, loops := 0.0, 0.0
	for _, id := range ids {
		dups += m.stageCount(id, "dedup", "duplicate") + m.stageCount(id, "persist", "duplicate")
		loops += m.stageCount(id, "loop_check", "loop")
	}
	// Each message reaches the two other instances twice (directly and
	// through the third): one copy each is a duplicate. The path-aware
	// recipient choice never sends a message back into its path, so the
	// loop counter stays at zero here.
	if dups < 3*k {
		t.Errorf("%v duplicates dropped, want at least %d", dups, 3*k)
	}
	t.Logf("duplicates dropped: %v, loops dropped: %v", dups, loops)
	for _, c := range clients {
		c.close()
	}
}

// A-B-C, A and C not linked (both dial B): messages cross B exactly once,
// both ways.
func TestMeshLine(t *testing.T) {
	m := newMesh(t, map[string][]string{"line-a": {"a"}, "line-b": {"b"}, "line-c": {"c"}},
		"line-a>line-b", "line-c>line-b")
	m.linked("line-a", "line-b")
	m.linked("line-c", "line-b")
	if m.ins["line-a"].Links().Get("line-c") != nil {
		t.Fatal("line-a knows line-c")
	}
	a := newMeshClient(t, m.ins["line-a"], "c-a")
	c := newMeshClient(t, m.ins["line-c"], "c-c")
	const k = 30
	fromA, fromC := a.publish(t, k), c.publish(t, k)
	a.waitAcked(t, fromA)
	c.waitAcked(t, fromC)
	c.expectExactly(t, fromA)
	a.expectExactly(t, fromC)
	for _, d := range []*meshClient{a, c} {
		d.mu.Lock()
		for _, m := range d.got {
			if !slices.Equal(m.MessagePath[1:], []string{"line-b", strings.Replace(d.id, "c-", "line-", 1)}) {
				t.Errorf("%s got %s with path %v", d.id, m.MessageID, m.MessagePath)
			}
		}
		d.mu.Unlock()
	}
	a.close()
	c.close()
}

// Tags per link: a message targeted at ["gcp"] from aws-1 reaches gcp-1
// over the link tagged gcp, and there the clients carrying gcp; azure-1
// never sees it. Targeting applies at every hop: an instance forwards to
// the links (peers and clients) that carry a targeted tag, so at the last
// hop a client must carry the tag (HELLO tags or ?tags=) to get the message.
func TestMeshTargetedTags(t *testing.T) {
	m := newMesh(t, triangleTags,
		"aws-1>azure-1", "aws-1>gcp-1", "azure-1>aws-1", "azure-1>gcp-1", "gcp-1>aws-1", "gcp-1>azure-1")
	m.linked("aws-1", "azure-1")
	m.linked("aws-1", "gcp-1")
	m.linked("azure-1", "gcp-1")
	for _, pair := range [][2]string{{"aws-1", "gcp-1"}, {"gcp-1", "aws-1"}, {"azure-1", "gcp-1"}} {
		if tags := m.ins[pair[0]].Links().Get(pair[1]).Tags(); !slices.Equal(tags, triangleTags[pair[1]]) {
			t.Fatalf("at %s the link %s has tags %v, want its configured %v", pair[0], pair[1], tags, triangleTags[pair[1]])
		}
	}
	pub := newMeshClient(t, m.ins["aws-1"], "pub-aws")
	gcp := newMeshClient(t, m.ins["gcp-1"], "sub-gcp", "gcp")
	gcpOther := newMeshClient(t, m.ins["gcp-1"], "sub-gcp-untagged")
	azure := newMeshClient(t, m.ins["azure-1"], "sub-azure", "azure", "gcp-fan") // no gcp tag

	ids := pub.publish(t, 5, `"targetedTags":["gcp"]`)
	pub.waitAcked(t, ids)
	gcp.expectExactly(t, ids)
	for _, c := range []*meshClient{gcpOther, azure} {
		if counts, _ := c.deliveries(); len(counts) > 0 {
			t.Fatalf("%s got %v, which was targeted at gcp", c.id, counts)
		}
	}
	// Stored (dedup marker) at gcp-1; never seen at azure-1.
	for id, wantStored := range map[string]bool{"gcp-1": true, "azure-1": false} {
		err := m.ins[id].Store().DB().View(func(txn *badger.Txn) error {
			for _, msg := range ids {
				_, err := txn.Get(store.DedupKey("aws-1", msg))
				if stored := err == nil; stored != wantStored {
					return fmt.Errorf("%s: message %s stored = %v (%v)", id, msg, stored, err)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []*meshClient{pub, gcp, gcpOther, azure} {
		c.close()
	}
}

// A peer that dials in and has never connected gets what was published
// before its first connection when the instance declares it an
// inbound_peer: b dials a; a's client publishes (untargeted, and targeted
// at b's tag) before b ever ran; b holds all of it once it is up.
func TestMeshInboundPeerBeforeFirstConnection(t *testing.T) {
	m := planMesh(t, false, map[string][]string{"first-a": {"a"}, "first-b": {"b"}}, "first-b>first-a", "first-a<first-b")
	m.start("first-a")
	pub := newMeshClient(t, m.ins["first-a"], "pub-a")
	defer pub.close()
	frames := map[string]string{
		"k1": sk("m1", "k1", "1"),
		"k2": sk("m2", "k2", "2"),
		"k3": sk("m3", "k3", "3", `"targetedTags":["b"]`),
	}
	for _, f := range frames {
		if err := pub.write([]byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	pub.waitAcked(t, []string{"m1", "m2", "m3"})
	if n, err := m.ins["first-a"].Store().CountOutbox("first-b"); err != nil || n != len(frames) {
		t.Fatalf("first-a holds %d deliveries for first-b (%v), want %d", n, err, len(frames))
	}

	m.start("first-b")
	m.linked("first-a", "first-b")
	testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		for key := range frames {
			if rec, err := m.ins["first-b"].Store().State(key); err != nil || rec == nil {
				return fmt.Errorf("first-b has no state for %s (%v)", key, err)
			}
		}
		if n, err := m.ins["first-a"].Store().CountOutbox("first-b"); err != nil || n != 0 {
			return fmt.Errorf("first-a still holds %d deliveries for first-b (%v)", n, err)
		}
		return nil
	})
}

// A peer that is down gets its backlog when it comes back: line A-B-C with
// B dialling both; C stops, A's client publishes, C restarts on the same
// port and data; C's client gets everything, in order, once.
func TestMeshPeerDownBacklog(t *testing.T) {
	m := newMesh(t, map[string][]string{"down-a": {"a"}, "down-b": {"b"}, "down-c": {"c"}},
		"down-b>down-a", "down-b>down-c")
	m.linked("down-a", "down-b")
	m.linked("down-b", "down-c")
	pub := newMeshClient(t, m.ins["down-a"], "pub-a")
	sub := newMeshClient(t, m.ins["down-c"], "sub-c")

	warm := pub.publish(t, 3)
	sub.expectExactly(t, warm)
	sub.close()
	m.stop("down-c")
	cl := m.ins["down-b"].Source("websocket_client.peers").(*sources.Client)
	testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if s := cl.PeerState("down-c"); s == sources.PeerConnected {
			return fmt.Errorf("down-b still sees down-c as %q", s)
		}
		return nil
	})

	const k = 40
	backlog := make([]string, k)
	for i := range k {
		backlog[i] = fmt.Sprintf("late-%03d", i)
		if err := pub.write([]byte(sk(backlog[i], "k", fmt.Sprint(i)))); err != nil {
			t.Fatal(err)
		}
	}
	pub.waitAcked(t, backlog)
	testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		n, err := m.ins["down-b"].Store().CountOutbox("down-c")
		if err != nil || n < k {
			return fmt.Errorf("down-b holds %d deliveries for down-c (%v)", n, err)
		}
		return nil
	})

	m.start("down-c")
	m.linked("down-b", "down-c")
	sub = newMeshClient(t, m.ins["down-c"], "sub-c")
	sub.expectExactly(t, backlog)
	if _, order := sub.deliveries(); !slices.Equal(order, backlog) {
		t.Fatalf("backlog out of order: %v", order)
	}
	pub.close()
	sub.close()
}
