package daemon_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/client"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// A peer that is down collects a backlog in the outbox of its link, on
// disk: the claim under test is that the instance's memory stays bounded
// (flat) whatever the backlog, and that the backlog drains quickly when the
// peer comes back.
//
// Instance A has a configured peer B. B ran once (its consumer's durable
// link "sub-b" exists, as it would in production) and is down: A's peer url
// points at B's port, where a listener closes every connection at once. A
// publisher on A sends n messages, pipelined with PublishAsync; the
// process's heap and RSS are sampled every `every` messages. Then B starts
// on its port, A's link to B connects, and the consumer on B receives the
// backlog; the drain rate and the memory while draining are measured.
//
// The consumer may get a message twice: B sends a delivery again when its
// ACK is later than ack_timeout (2s in the test config), which at least
// once allows (the SDK's receiver-side dedup drops the copy); the count is
// reported. A missing message fails the test.
//
// TestPeerDownBacklog is a small always-run version (so that the soak
// cannot rot); TestPeerDownBacklogSoak runs with SLIPSTREAM_SOAK=1, 1,000,000
// messages by default (SLIPSTREAM_SOAK_MESSAGES overrides), and gives up
// publishing or draining when its time budget (SLIPSTREAM_SOAK_BUDGET,
// default 10m) is spent, reporting what it got.
//
// Memory is the whole test process: A, the publisher and, while draining,
// B and the consumer too. SLIPSTREAM_SOAK_HEAPPROFILE=prefix writes heap
// profiles (go tool pprof) to prefix-backlog.pprof once the backlog is
// ACKed and to prefix-drained.pprof once it is drained;
// SLIPSTREAM_SOAK_CPUPROFILE=file profiles the CPU while the backlog drains.
// SLIPSTREAM_SOAK_WINDOW=n sets the websocket sink's window (unACKed
// deliveries in flight per link) of both instances, to see what bounds the
// drain. The soak also samples the memory after 20s without traffic (Badger
// gives its table-builder buffers back only when idle).

func TestPeerDownBacklog(t *testing.T) {
	r := runPeerDownBacklog(t, 5000, 1000, 2*time.Minute, 0, 0)
	if r.published != 5000 || r.delivered != 5000 {
		t.Fatalf("published %d, delivered %d; want 5000 each", r.published, r.delivered)
	}
}

func TestPeerDownBacklogSoak(t *testing.T) {
	if os.Getenv("SLIPSTREAM_SOAK") != "1" {
		t.Skip("set SLIPSTREAM_SOAK=1 to run the 1,000,000-message backlog")
	}
	n := 1_000_000
	if v := os.Getenv("SLIPSTREAM_SOAK_MESSAGES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("SLIPSTREAM_SOAK_MESSAGES=%q: want a positive number", v)
		}
	}
	budget := 10 * time.Minute
	if v := os.Getenv("SLIPSTREAM_SOAK_BUDGET"); v != "" {
		var err error
		if budget, err = time.ParseDuration(v); err != nil || budget <= 0 {
			t.Fatalf("SLIPSTREAM_SOAK_BUDGET=%q: want a positive duration", v)
		}
	}
	window := 0
	if v := os.Getenv("SLIPSTREAM_SOAK_WINDOW"); v != "" {
		var err error
		if window, err = strconv.Atoi(v); err != nil || window < 1 {
			t.Fatalf("SLIPSTREAM_SOAK_WINDOW=%q: want a positive number", v)
		}
	}
	r := runPeerDownBacklog(t, n, max(n/20, 1), budget, window, 20*time.Second)
	if r.delivered != r.published {
		t.Errorf("published %d, delivered %d", r.published, r.delivered)
	}
}

// backlogMem is the process's memory at one point.
type backlogMem struct {
	at        string
	heapInuse uint64 // runtime.MemStats.HeapInuse, as it is
	heapLive  uint64 // HeapInuse right after a forced GC
	rss       uint64 // VmRSS from /proc/self/status (0 where there is none)
	rssAnon   uint64 // RssAnon: VmRSS without the mapped files (Badger mmaps its tables)
}

func backlogSampleMem(at string, gc bool) backlogMem {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := backlogMem{at: at, heapInuse: ms.HeapInuse}
	s.rss, s.rssAnon = backlogRSS()
	if gc {
		runtime.GC()
		runtime.ReadMemStats(&ms)
		s.heapLive = ms.HeapInuse
	}
	return s
}

// backlogRSS reads the resident set size of this process (VmRSS) and its
// anonymous part (RssAnon), in bytes.
func backlogRSS() (rss, anon uint64) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	kb := func(v string) uint64 {
		n, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		return n << 10
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			rss = kb(v)
		} else if v, ok := strings.CutPrefix(sc.Text(), "RssAnon:"); ok {
			anon = kb(v)
		}
	}
	return rss, anon
}

// backlogHeapProfile writes a heap profile when SLIPSTREAM_SOAK_HEAPPROFILE
// names a prefix.
func backlogHeapProfile(t *testing.T, name string) {
	prefix := os.Getenv("SLIPSTREAM_SOAK_HEAPPROFILE")
	if prefix == "" {
		return
	}
	f, err := os.Create(prefix + "-" + name + ".pprof")
	if err != nil {
		t.Errorf("heap profile: %v", err)
		return
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		t.Errorf("heap profile: %v", err)
	}
}

func backlogMiB(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// backlogResult is what one run measured.
type backlogResult struct {
	published, delivered, duplicates int
	publishRate, drainRate           float64 // msgs/s
	drainPeak                        backlogMem
}

// backlogRefuser holds a port and closes every connection it accepts: a peer that
// is down, without the port being free for another socket to take.
type backlogRefuser struct {
	ln   net.Listener
	done chan struct{}
}

func backlogRefuse(t *testing.T, addr string) *backlogRefuser {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("hold %s: %v", addr, err)
	}
	r := &backlogRefuser{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return r
}

func (r *backlogRefuser) close() {
	r.ln.Close()
	<-r.done
}

// runPeerDownBacklog publishes n messages while B is down, sampling every
// `every`, then drains them; window > 0 sets the sinks' window, idle > 0
// samples the memory once more after that long without traffic.
func runPeerDownBacklog(t *testing.T, n, every int, budget time.Duration, window int, idle time.Duration) backlogResult {
	deadline := time.Now().Add(budget)
	var res backlogResult
	const aID, bID, subID = "backlog-a", "backlog-b", "sub-b"
	nodes := map[string]meshNode{}
	for _, id := range []string{aID, bID} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		nodes[id] = meshNode{id: id, tags: []string{id}, port: ln.Addr().(*net.TCPAddr).Port, dir: t.TempDir()}
		ln.Close()
	}
	a := nodes[aID]
	a.peers = []string{bID}
	nodes[aID] = a
	bAddr := fmt.Sprintf("127.0.0.1:%d", nodes[bID].port)
	hcl := func(id string) string {
		c := meshHCL(nodes[id], nodes)
		if window > 0 {
			c = strings.Replace(c, `sink "websocket" "links" {`, fmt.Sprintf("sink \"websocket\" \"links\" {\n  window = %d", window), 1)
		}
		return c
	}

	// B runs once so that its consumer's durable link exists, then goes down.
	b := startInstance(t, hcl(bID))
	ctx := context.Background()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	sub, err := client.Dial(dctx, b.url, client.Options{ID: subID})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	sub.Close()
	b.stop()
	down := backlogRefuse(t, bAddr)
	defer func() {
		if down != nil {
			down.close()
		}
	}()

	ina := startInstance(t, hcl(aID))
	pub, err := client.Dial(ctx, ina.url, client.Options{AutoAck: true})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	go func() {
		for range pub.Deliveries() {
		}
	}()

	// Publish the backlog, at most inflight unACKed at a time.
	const inflight = 1024
	value := json.RawMessage(`"` + strings.Repeat("x", 200) + `"`)
	slots := make(chan struct{}, inflight)
	var acked, failed atomic.Int64
	var errMu sync.Mutex
	var firstErr error
	drainSlots := func() bool { // waits for every outstanding ACK
		timer := time.NewTimer(time.Until(deadline))
		defer timer.Stop()
		taken := 0
		defer func() {
			for range taken {
				<-slots
			}
		}()
		for range inflight {
			select {
			case slots <- struct{}{}:
				taken++
			case <-timer.C:
				return false
			}
		}
		return true
	}
	samples := []backlogMem{backlogSampleMem("backlog 0", true)}
	pubStart := time.Now()
	sent := 0
	for ; sent < n && time.Now().Before(deadline); sent++ {
		if sent > 0 && sent%every == 0 {
			if !drainSlots() {
				break
			}
			samples = append(samples, backlogSampleMem(fmt.Sprintf("backlog %d", sent), true))
		}
		slots <- struct{}{}
		m := &slipstream.Message{Type: slipstream.TypeSK, Key: "backlog/" + strconv.Itoa(sent), Value: value}
		err := pub.PublishAsync(m, func(_ *slipstream.Message, err error) {
			if err != nil {
				failed.Add(1)
				errMu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				errMu.Unlock()
			} else {
				acked.Add(1)
			}
			<-slots
		})
		if err != nil {
			<-slots
			t.Fatalf("publish %d: %v", sent, err)
		}
	}
	if !drainSlots() {
		t.Logf("gave up waiting for ACKs: the time budget %s is spent", budget)
	}
	pubSecs := time.Since(pubStart).Seconds()
	res.published = int(acked.Load())
	res.publishRate = float64(res.published) / pubSecs
	if failed.Load() > 0 {
		t.Fatalf("%d publishes failed, first: %v", failed.Load(), firstErr)
	}
	if sent < n {
		t.Logf("gave up publishing after %d of %d messages: the time budget %s is spent", sent, n, budget)
	}
	samples = append(samples, backlogSampleMem(fmt.Sprintf("backlog %d (all ACKed)", res.published), true))
	backlogHeapProfile(t, "backlog")
	left, err := ina.Store().CountOutbox(bID)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("published %d messages in %.1fs (%.0f msgs/s) while %s was down; %d wait in A's outbox for it",
		res.published, pubSecs, res.publishRate, bID, left)
	if left != res.published {
		t.Errorf("A's outbox for %s holds %d deliveries, want %d", bID, left, res.published)
	}

	// B comes back: the consumer gets the backlog.
	seen := make([]bool, n)
	var delivered, dups atomic.Int64
	var lastNs atomic.Int64
	allIn := make(chan struct{})
	if path := os.Getenv("SLIPSTREAM_SOAK_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	down.close()
	down = nil
	drainStart := time.Now()
	b = startInstance(t, hcl(bID))
	if l := b.Links().Get(subID); l == nil || !l.Durable() {
		t.Fatalf("%s does not know its consumer %s after the restart", bID, subID)
	}
	dctx, cancel = context.WithTimeout(ctx, 10*time.Second)
	sub, err = client.Dial(dctx, b.url, client.Options{ID: subID, AutoAck: true, Buffer: 4096})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	subDone := make(chan struct{})
	go func() {
		defer close(subDone)
		for d := range sub.Deliveries() {
			i, err := strconv.Atoi(strings.TrimPrefix(d.Msg.Key, "backlog/"))
			if err != nil || i < 0 || i >= n {
				continue
			}
			if seen[i] {
				dups.Add(1)
				continue
			}
			seen[i] = true
			lastNs.Store(time.Now().UnixNano())
			if delivered.Add(1) == int64(res.published) {
				close(allIn)
			}
		}
	}()

	// Sample while draining: the link, the peak, and every `every` messages.
	var linkUp time.Time
	peak := backlogSampleMem("draining", false)
	profiled := peak.heapInuse
	nextMark := every
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	done := res.published == 0
	for !done {
		select {
		case <-allIn:
			done = true
		case <-tick.C:
		}
		if linkUp.IsZero() {
			if l := ina.Links().Get(bID); l != nil && l.Connected() {
				linkUp = time.Now()
			}
		}
		s := backlogSampleMem("draining", false)
		if s.heapInuse > peak.heapInuse {
			if s.heapInuse > profiled+profiled/4 {
				backlogHeapProfile(t, "drainpeak") // as of the last GC: the peak's live part
				profiled = s.heapInuse
			}
			peak.heapInuse = s.heapInuse
		}
		peak.rss, peak.rssAnon = max(peak.rss, s.rss), max(peak.rssAnon, s.rssAnon)
		if d := int(delivered.Load()); d >= nextMark && !done {
			samples = append(samples, backlogSampleMem(fmt.Sprintf("drained %d", d), false))
			nextMark = (d/every + 1) * every
		}
		if time.Now().After(deadline) {
			t.Logf("gave up draining after %d of %d messages: the time budget %s is spent", delivered.Load(), res.published, budget)
			break
		}
	}
	res.delivered, res.duplicates = int(delivered.Load()), int(dups.Load())
	start := drainStart
	if !linkUp.IsZero() {
		start = linkUp
	}
	if end := lastNs.Load(); end > start.UnixNano() {
		res.drainRate = float64(res.delivered) / (float64(end-start.UnixNano()) / 1e9)
	}
	res.drainPeak = peak
	samples = append(samples, backlogSampleMem(fmt.Sprintf("drained %d", res.delivered), true))
	pprof.StopCPUProfile() // when one runs: the drain is over
	backlogHeapProfile(t, "drained")
	if idle > 0 && time.Until(deadline) > idle {
		time.Sleep(idle)
		samples = append(samples, backlogSampleMem(fmt.Sprintf("%s idle", idle), true))
	}
	sub.Close()
	<-subDone
	if res.delivered == res.published {
		testutil.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			if left, err := ina.Store().CountOutbox(bID); err != nil || left != 0 {
				return fmt.Errorf("A's outbox for %s still holds %d deliveries (%v)", bID, left, err)
			}
			return nil
		})
	}

	t.Logf("drain: %d of %d delivered to %s on %s at %.0f msgs/s (from the link connecting, %s after B started), %d duplicates",
		res.delivered, res.published, subID, bID, res.drainRate, linkUp.Sub(drainStart).Round(time.Millisecond), res.duplicates)
	t.Logf("peak while draining: HeapInuse %s, VmRSS %s, RssAnon %s (sampled every 50ms)",
		backlogMiB(peak.heapInuse), backlogMiB(peak.rss), backlogMiB(peak.rssAnon))
	t.Logf("%-28s %12s %12s %12s %12s", "memory (whole process)", "HeapInuse", "live heap", "VmRSS", "RssAnon")
	for _, s := range samples {
		live := "-"
		if s.heapLive > 0 {
			live = backlogMiB(s.heapLive)
		}
		t.Logf("%-28s %12s %12s %12s %12s", s.at, backlogMiB(s.heapInuse), live, backlogMiB(s.rss), backlogMiB(s.rssAnon))
	}
	return res
}
