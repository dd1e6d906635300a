package daemon_test

import (
	"bufio"
	"bytes"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/slipstream-sync/slipstream/internal/daemon"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// The metric catalogue of docs/operations.md is checked against live
// instances: a small workload on two linked instances (publish, deliver,
// ACK, a duplicate, a dead letter, a get answered across the link, commands
// allowed and forbidden, a refused connection, a garbage frame), then each
// instance's /metrics must pass `promtool check metrics`, hold every metric
// of the catalogue with its documented type and labels, and hold no
// slipstream_ metric the catalogue does not list.

// obsNode is an instance of the observability tests: meshHCL's (the nine
// default stages, one websocket_client peer per entry of peers), plus a
// "guarded" listener that requires a token.
type obsNode struct {
	id      string
	dir     string
	peers   map[string]string // id -> ws URL of the instances it dials
	extra   string            // more top-level blocks (tracing)
	ingress string            // more attributes of the ingress listener
	sink    string            // replaces the websocket sink's ack_timeout and max_attempts
}

func (n obsNode) hcl() string {
	all := map[string]meshNode{}
	node := meshNode{id: n.id, tags: []string{n.id}, dir: n.dir} // port 0: a free one
	for _, id := range slices.Sorted(maps.Keys(n.peers)) {
		_, port, _ := net.SplitHostPort(strings.TrimSuffix(strings.TrimPrefix(n.peers[id], "ws://"), "/ws"))
		p, err := strconv.Atoi(port)
		if err != nil {
			panic("peer URL " + n.peers[id] + ": " + err.Error())
		}
		all[id] = meshNode{id: id, tags: []string{id}, port: p}
		node.peers = append(node.peers, id)
	}
	hcl := meshHCL(node, all)
	edit := func(old, new string) {
		if !strings.Contains(hcl, old) {
			panic(fmt.Sprintf("meshHCL changed: no %q in\n%s", old, hcl))
		}
		hcl = strings.Replace(hcl, old, new, 1)
	}
	edit("default_tags = [\"local\"]\n", "default_tags = [\"local\"]\n  "+n.ingress+"\n")
	edit("sources = [source.websocket_server.ingress", "sources = [source.websocket_server.ingress, source.websocket_server.guarded")
	if n.sink != "" {
		edit("ack_timeout  = \"2s\"\n  max_attempts = 0", n.sink)
	}
	return hcl + `
source "websocket_server" "guarded" {
  listen = "127.0.0.1:0"
  tokens = ["s3cret"]
}
` + n.extra
}

// sourceURL is the ws URL of a listener of in.
func sourceURL(in *testInstance, name string) string {
	return "ws://" + in.Source("websocket_server."+name).(interface{ Addr() net.Addr }).Addr().String() + "/ws"
}

// websocketDial dials url once and closes what it got.
func websocketDial(url string) (*websocket.Conn, *http.Response, error) {
	c, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if c != nil {
		c.Close()
	}
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	return c, resp, err
}

// peerUp waits until in's link to peer is connected.
func peerUp(t *testing.T, in *testInstance, peer string) {
	t.Helper()
	testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if l := in.Links().Get(peer); l == nil || !l.Connected() {
			return fmt.Errorf("%s is not linked to %s", in.AdminAddr(), peer)
		}
		return nil
	})
}

// requireTool returns the path of a tool the test needs. It skips when the
// tool is absent, unless SLIPSTREAM_REQUIRE_TOOLS is set (scripts/test.sh,
// CI): then the test fails, saying how to get it.
func requireTool(t *testing.T, path, hint string) string {
	t.Helper()
	p, err := exec.LookPath(path)
	if err == nil {
		return p
	}
	if os.Getenv("SLIPSTREAM_REQUIRE_TOOLS") != "" {
		t.Fatalf("%s not found (%v) and SLIPSTREAM_REQUIRE_TOOLS is set: %s", path, err, hint)
	}
	t.Skipf("%s not found (%v): %s", path, err, hint)
	return ""
}

const promtoolHint = "install it with `apt-get install -y prometheus` (or run scripts/test.sh, which does)"

// repoFile is the path of a file of the repository.
func repoFile(t *testing.T, rel string) string {
	t.Helper()
	_, here, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test file")
	}
	return filepath.Join(filepath.Dir(here), "..", "..", rel)
}

// catalogueEntry is one row of the metric catalogue.
type catalogueEntry struct {
	typ    string
	labels []string // sorted
	// optional: the row's meaning starts with "only with" (a feature the
	// workload does not use): checked when exported, not required.
	optional bool
}

var (
	catalogueRow  = regexp.MustCompile("^\\| `(slipstream_[a-z_]+)` \\| (counter|gauge|histogram|summary) \\| ([^|]*) \\| ([^|]*)")
	parenthesised = regexp.MustCompile(`\([^)]*\)`)
	backticked    = regexp.MustCompile("`([a-z_]+)`")
)

// readCatalogue parses the catalogue table of docs/operations.md (between
// the catalogue markers).
func readCatalogue(t *testing.T) map[string]catalogueEntry {
	t.Helper()
	b, err := os.ReadFile(repoFile(t, "docs/operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- catalogue:")
	table, _, ok2 := strings.Cut(rest, "<!-- /catalogue -->")
	if !ok || !ok2 {
		t.Fatal("docs/operations.md has no catalogue markers")
	}
	cat := map[string]catalogueEntry{}
	for line := range strings.SplitSeq(table, "\n") {
		m := catalogueRow.FindStringSubmatch(line)
		if m == nil {
			if strings.HasPrefix(line, "| `") {
				t.Errorf("catalogue row not understood: %s", line)
			}
			continue
		}
		var labels []string
		for _, l := range backticked.FindAllStringSubmatch(parenthesised.ReplaceAllString(m[3], ""), -1) {
			labels = append(labels, l[1])
		}
		sort.Strings(labels)
		if _, dup := cat[m[1]]; dup {
			t.Errorf("catalogue lists %s twice", m[1])
		}
		cat[m[1]] = catalogueEntry{typ: m[2], labels: labels, optional: strings.HasPrefix(m[4], "only with ")}
	}
	if len(cat) < 20 {
		t.Fatalf("catalogue has %d rows; the table was not parsed", len(cat))
	}
	return cat
}

// family is a metric family of a scrape.
type family struct {
	typ     string
	labels  map[string]bool           // label names over all samples (le and quantile excluded)
	samples map[string][]labeledValue // by sample name (name, name_bucket, ...)
}

type labeledValue struct {
	labels map[string]string
	value  float64
}

// scrape gets /metrics of an instance.
func scrape(t *testing.T, in *testInstance) []byte {
	t.Helper()
	resp, err := http.Get("http://" + in.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	return buf.Bytes()
}

// parseExposition parses the Prometheus text format (what /metrics serves).
func parseExposition(t *testing.T, text []byte) map[string]*family {
	t.Helper()
	fams := map[string]*family{}
	var cur *family
	var curName string
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(rest, " ")
			cur, curName = &family{typ: typ, labels: map[string]bool{}, samples: map[string][]labeledValue{}}, name
			fams[name] = cur
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, labels, value, err := parseSample(line)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		if cur == nil || !strings.HasPrefix(name, curName) {
			t.Fatalf("/metrics sample %q outside its family", line)
		}
		for k := range labels {
			if k != "le" && k != "quantile" {
				cur.labels[k] = true
			}
		}
		cur.samples[name] = append(cur.samples[name], labeledValue{labels, value})
	}
	return fams
}

// parseSample reads `name{a="x",b="y"} value`.
func parseSample(line string) (string, map[string]string, float64, error) {
	labels := map[string]string{}
	i := strings.IndexAny(line, "{ ")
	if i < 0 {
		return "", nil, 0, fmt.Errorf("no value")
	}
	name, rest := line[:i], line[i:]
	if rest[0] == '{' {
		rest = rest[1:]
		for rest != "" && rest[0] != '}' {
			k, after, ok := strings.Cut(rest, "=\"")
			if !ok {
				return "", nil, 0, fmt.Errorf("bad label")
			}
			var v strings.Builder
			j := 0
			for ; j < len(after) && after[j] != '"'; j++ {
				if after[j] == '\\' && j+1 < len(after) {
					j++
					switch after[j] {
					case 'n':
						v.WriteByte('\n')
					default:
						v.WriteByte(after[j])
					}
					continue
				}
				v.WriteByte(after[j])
			}
			if j == len(after) {
				return "", nil, 0, fmt.Errorf("unterminated label value")
			}
			labels[k] = v.String()
			rest = strings.TrimPrefix(after[j+1:], ",")
		}
		if rest == "" {
			return "", nil, 0, fmt.Errorf("unterminated labels")
		}
		rest = rest[1:]
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return "", nil, 0, fmt.Errorf("no value")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	return name, labels, v, err
}

// sum adds the values of sample name whose labels include want.
func (f *family) sum(name string, want map[string]string) float64 {
	if f == nil {
		return 0
	}
	total := 0.0
	for _, s := range f.samples[name] {
		if matches(s.labels, want) {
			total += s.value
		}
	}
	return total
}

func matches(labels, want map[string]string) bool {
	for k, v := range want {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// promtoolCheck pipes an exposition into `promtool check metrics`.
func promtoolCheck(t *testing.T, promtool, what string, text []byte) {
	t.Helper()
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("promtool check metrics on %s: %v\n%s", what, err, out)
	}
}

func TestMetricsCatalogueOnLiveInstances(t *testing.T) {
	promtool := requireTool(t, "promtool", promtoolHint)
	cat := readCatalogue(t)

	// b: commands are not allowed on its ingress; a dials b, allows
	// commands, and dead-letters after one ack timeout.
	b := startInstanceWith(t, obsNode{id: "mx-b", dir: filepath.Join(t.TempDir(), "b")}.hcl(),
		daemon.Options{StoreGCInterval: 50 * time.Millisecond})
	a := startInstanceWith(t, obsNode{id: "mx-a", dir: filepath.Join(t.TempDir(), "a"),
		peers:   map[string]string{"mx-b": b.url},
		ingress: "allow_commands = true",
		sink:    "ack_timeout = \"500ms\"\n  max_attempts = 1",
	}.hcl(), daemon.Options{StoreGCInterval: 50 * time.Millisecond})
	peerUp(t, a, "mx-b")
	peerUp(t, b, "mx-a")

	subA := newMeshClient(t, a, "sub-a")
	subB := newMeshClient(t, b, "sub-b")
	lazy := hello(t, a.url, "lazy-a") // never ACKs: its deliveries are dead-lettered
	pub := dial(t, a.url)             // no HELLO: an ephemeral link
	pub.sendString(sk("m1", "k1", `"v1"`))
	if m := pub.next(); m.Type != "ACK" || m.MessageID != "m1" {
		t.Fatalf("answer to m1: %+v", m)
	}
	pub.sendString(sk("m1", "k1", `"v1"`)) // a duplicate: ACKed again
	if m := pub.next(); m.Type != "ACK" || m.MessageID != "m1" {
		t.Fatalf("answer to the duplicate m1: %+v", m)
	}
	subA.expectExactly(t, []string{"m1"})
	subB.expectExactly(t, []string{"m1"})
	pub.sendString(`{"type":"GK","messageId":"g1","key":"k1"}`) // answered by a and by b
	pub.sendString(`{"type":"CMD","messageId":"c1","command":"slipstream.ping"}`)
	pub.sendString(`{not json`)
	onB := dial(t, b.url)
	onB.sendString(`{"type":"CMD","messageId":"c2","command":"slipstream.ping"}`) // forbidden on b
	if m := onB.next(); m.Type != "ERR" || m.Code != "forbidden" {
		t.Fatalf("answer to a command on b: %+v", m)
	}
	if _, resp, err := websocketDial(sourceURL(b, "guarded")); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("dial without token: err %v, response %v; want 401", err, resp)
	}

	// Values the workload must have produced, per instance.
	type want struct {
		in     *testInstance
		metric string
		sample string
		labels map[string]string
	}
	wants := []want{
		{a, "slipstream_links", "slipstream_links", map[string]string{"kind": "peer", "state": "connected"}},
		{b, "slipstream_links", "slipstream_links", map[string]string{"kind": "peer", "state": "connected"}},
		{a, "slipstream_links", "slipstream_links", map[string]string{"kind": "client", "state": "connected"}},
		{a, "slipstream_messages_in_total", "slipstream_messages_in_total", map[string]string{"type": "SK", "link": "ephemeral", "outcome": "accepted"}},
		{a, "slipstream_messages_in_total", "slipstream_messages_in_total", map[string]string{"type": "SK", "link": "ephemeral", "outcome": "duplicate"}},
		{a, "slipstream_messages_in_total", "slipstream_messages_in_total", map[string]string{"type": "invalid", "outcome": "rejected"}},
		{b, "slipstream_messages_in_total", "slipstream_messages_in_total", map[string]string{"type": "SK", "link": "mx-a", "outcome": "accepted"}},
		{a, "slipstream_messages_out_total", "slipstream_messages_out_total", map[string]string{"type": "SK", "link": "mx-b", "outcome": "acked"}},
		{a, "slipstream_messages_out_total", "slipstream_messages_out_total", map[string]string{"type": "SK", "link": "sub-a", "outcome": "acked"}},
		{a, "slipstream_messages_out_total", "slipstream_messages_out_total", map[string]string{"type": "SK", "link": "lazy-a", "outcome": "dead_lettered"}},
		{a, "slipstream_ack_rtt_seconds", "slipstream_ack_rtt_seconds_count", map[string]string{"link": "mx-b"}},
		{a, "slipstream_message_age_seconds", "slipstream_message_age_seconds_count", map[string]string{"point": "accepted"}},
		{a, "slipstream_message_age_seconds", "slipstream_message_age_seconds_count", map[string]string{"point": "delivered"}},
		{b, "slipstream_message_age_seconds", "slipstream_message_age_seconds_count", map[string]string{"point": "delivered"}},
		{a, "slipstream_stage_messages_total", "slipstream_stage_messages_total", map[string]string{"stage": "dedup", "outcome": "duplicate"}},
		{a, "slipstream_link_deliveries_total", "slipstream_link_deliveries_total", map[string]string{"kind": "client", "outcome": "dead_lettered"}},
		{a, "slipstream_peer_connects_total", "slipstream_peer_connects_total", map[string]string{"peer": "mx-b", "outcome": "ok"}},
		{a, "slipstream_commands_total", "slipstream_commands_total", map[string]string{"command": "slipstream.ping", "outcome": "ok"}},
		{b, "slipstream_forbidden_total", "slipstream_forbidden_total", map[string]string{"type": "CMD"}},
		{b, "slipstream_connections_refused_total", "slipstream_connections_refused_total", map[string]string{"reason": "token"}},
		{a, "slipstream_store_gc_runs_total", "slipstream_store_gc_runs_total", nil},
	}
	var texts map[*testInstance][]byte
	var fams map[*testInstance]map[string]*family
	testutil.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		texts = map[*testInstance][]byte{a: scrape(t, a), b: scrape(t, b)}
		fams = map[*testInstance]map[string]*family{a: parseExposition(t, texts[a]), b: parseExposition(t, texts[b])}
		for _, w := range wants {
			if fams[w.in][w.metric].sum(w.sample, w.labels) == 0 {
				return fmt.Errorf("%s%v is 0 on %s", w.sample, w.labels, w.in.AdminAddr())
			}
		}
		for name, c := range cat {
			if !c.optional && fams[a][name] == nil && fams[b][name] == nil {
				return fmt.Errorf("%s is in the catalogue but neither instance exports it", name)
			}
		}
		return nil
	})

	promtoolCheck(t, promtool, "mx-a", texts[a])
	promtoolCheck(t, promtool, "mx-b", texts[b])
	for _, in := range []*testInstance{a, b} {
		for name, f := range fams[in] {
			if !strings.HasPrefix(name, "slipstream_") {
				continue
			}
			c, ok := cat[name]
			if !ok {
				t.Errorf("%s exports %s, which the catalogue in docs/operations.md does not list", in.AdminAddr(), name)
				continue
			}
			if f.typ != c.typ {
				t.Errorf("%s is a %s; the catalogue says %s", name, f.typ, c.typ)
			}
			if got := slices.Sorted(maps.Keys(f.labels)); !slices.Equal(got, c.labels) {
				t.Errorf("%s has labels %v; the catalogue says %v", name, got, c.labels)
			}
		}
	}
	// Ephemeral links share one label value: no con-... link ids.
	for _, in := range []*testInstance{a, b} {
		if bytes.Contains(texts[in], []byte(`link="con-`)) {
			t.Errorf("%s labels a metric with an ephemeral link id:\n%s", in.AdminAddr(), grepLines(string(texts[in]), `link="con-`))
		}
	}
	lazy.close()
	pub.close()
	onB.close()
	subA.close()
	subB.close()
}

// The suggested alerting rules are valid Prometheus rules and use only
// metrics of the catalogue.
func TestAlertRules(t *testing.T) {
	promtool := requireTool(t, "promtool", promtoolHint)
	path := repoFile(t, "docs/alerts.yml")
	out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules %s: %v\n%s", path, err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cat := readCatalogue(t)
	for _, m := range regexp.MustCompile(`slipstream_[a-z_]+`).FindAllString(string(b), -1) {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_count"), "_sum")
		if _, ok := cat[base]; !ok {
			t.Errorf("docs/alerts.yml uses %s, which is not in the catalogue", m)
		}
	}
}
