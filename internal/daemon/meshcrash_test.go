package daemon_test

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// Crashes across a mesh: one instance of a linked pair runs as a
// subprocess and is killed with SIGKILL mid-stream, then restarted on the
// same data dir and port. The other runs in-process. A crashPublisher
// (crash_test.go: it resends what was not ACKed on every new connection)
// publishes on A; a durable client on B ACKs everything.

// meshCrashHeartbeat is relaxed: a killed process is noticed by its
// sockets closing, and a client must not be dropped by a heartbeat under
// load (its redeliveries would look like crash duplicates).
const meshCrashHeartbeat = `interval = "200ms"
    timeout  = "2s"`

// meshCrashHCL is faultHCL with a long ack_timeout: any redelivery seen by
// the subscriber comes from a kill, not from a slow ACK.
func meshCrashHCL(id, dir, listen string, peers ...faultPeer) string {
	hcl := faultHCL(id, dir, listen, meshCrashHeartbeat, peers...)
	out := strings.Replace(hcl, `ack_timeout  = "1s"`, `ack_timeout  = "30s"`, 1)
	if out == hcl {
		panic("meshCrashHCL: no ack_timeout to replace")
	}
	return out
}

// holdPort keeps port bound while its instance is down, so that no
// outgoing connection takes it as its local port; every connection is
// reset at once (a redial fails fast). release closes it.
func holdPort(t *testing.T, port int) (release func()) {
	t.Helper()
	var (
		ln  net.Listener
		err error
	)
	// The killed process's socket is gone once Wait returned; bind again.
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		ln, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		return err
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*net.TCPConn).SetLinger(0)
			_ = c.Close()
		}
	}()
	var once sync.Once
	release = func() { once.Do(func() { ln.Close(); <-done }) }
	t.Cleanup(release)
	return release
}

// meshCrashSub is crash_test.go's durable subscriber (?id=crash-sub: the
// link exists before the upgrade), connected with retries.
type meshCrashSub = crashSubscriber

// connect dials url as crash-sub and serves the connection in the
// background until it breaks or stop is called.
func (s *meshCrashSub) connect(t *testing.T, url string, round int) (stop func()) {
	t.Helper()
	var conn *websocket.Conn
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		var err error
		conn, _, err = websocket.DefaultDialer.Dial(url+"?id=crash-sub", nil)
		return err
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.serve(conn, round)
	}()
	var once sync.Once
	stop = func() { once.Do(func() { conn.Close(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func (s *meshCrashSub) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.firstIn)
}

func (p *crashPublisher) ackedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acked)
}

// waitCount waits until count() reaches target.
func waitCount(t *testing.T, what string, timeout time.Duration, target int, count func() int) {
	t.Helper()
	testutil.CheckFor(t, timeout, 2*time.Millisecond, func() error {
		if n := count(); n < target {
			return fmt.Errorf("%s: %d, want %d", what, n, target)
		}
		return nil
	})
}

// checkCrashDelivery checks the subscriber's deliveries against what the
// publisher got ACKed: every ACKed id arrived, and first arrivals are in
// publication order. It returns the ids that arrived more than once (once
// per extra arrival).
func checkCrashDelivery(t *testing.T, pub *crashPublisher, received []string) (dups []string) {
	t.Helper()
	seen := map[string]bool{}
	last := ""
	for _, id := range received {
		if seen[id] {
			dups = append(dups, id)
			continue
		}
		seen[id] = true
		if id < last {
			t.Errorf("%s first delivered after %s: out of order", id, last)
		}
		last = id
	}
	pub.mu.Lock()
	var missing []string
	for id := range pub.acked {
		if !seen[id] {
			missing = append(missing, id)
		}
	}
	pub.mu.Unlock()
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("%d messages ACKed to the publisher never delivered, first %v", len(missing), missing[:min(5, len(missing))])
	}
	return dups
}

// B (the receiving instance) is killed twice mid-stream; A keeps
// accepting the stream meanwhile (its outbox to B grows) and after each
// restart resumes it. Every message ACKed to the publisher reaches B's
// client, first arrivals in order; only messages first delivered before a
// kill may arrive twice.
func TestMeshCrashKillReceiver(t *testing.T) {
	start := time.Now()
	portB := testutil.FreePort(t)
	dirB := filepath.Join(t.TempDir(), "b")
	hclB := meshCrashHCL("mc-b", dirB, fmt.Sprintf("127.0.0.1:%d", portB))
	urlB := fmt.Sprintf("ws://127.0.0.1:%d/ws", portB)

	const total, rounds = 2000, 3 // the first two rounds end with a SIGKILL of B
	sub := &meshCrashSub{firstIn: map[string]int{}}
	pub := &crashPublisher{acked: map[string]bool{}}
	var (
		a       *faultInstance
		release = func() {}
	)
	var logs []*testutil.SyncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range logs {
				t.Logf("logs of mc-b, run %d:\n%s", i, l.String())
			}
		}
	})

	for round := range rounds {
		release()
		proc := startProcess(t, hclB, portB)
		logs = append(logs, proc.logs)
		stopSub := sub.connect(t, urlB, round)
		if round == 0 {
			a = startFaultInstanceHCL(t, "mc-a", meshCrashHCL("mc-a", t.TempDir(), "127.0.0.1:0",
				faultPeer{id: "mc-b", url: urlB}))
			testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
				if !a.Links().Get("mc-b").Connected() {
					return errors.New("mc-a is not linked to mc-b")
				}
				return nil
			})
			stopPub, pubDone := make(chan struct{}), make(chan struct{})
			go func() { defer close(pubDone); pub.runFor(a.url, total, 64, stopPub) }()
			t.Cleanup(func() { close(stopPub); <-pubDone }) // before A stops
		}
		if round == rounds-1 {
			waitCount(t, "messages ACKed to the publisher", 30*time.Second, total, pub.ackedCount)
			waitCount(t, "distinct messages at the subscriber", 30*time.Second, total, sub.distinct)
			stopSub()
			proc.kill()
			break
		}
		// Kill B while the stream flows through it.
		waitCount(t, "distinct messages at the subscriber", 20*time.Second, (round+1)*total/4, sub.distinct)
		proc.kill()
		stopSub()
		release = holdPort(t, portB)
		ackedAtKill := pub.ackedCount()
		// A notices, and keeps storing the stream for B meanwhile.
		testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			if a.Links().Get("mc-b").Connected() {
				return errors.New("mc-a still has mc-b's link up")
			}
			return nil
		})
		waitCount(t, "messages ACKed to the publisher while B is down", 20*time.Second, min(total, ackedAtKill+200), pub.ackedCount)
		n, err := a.Store().CountOutbox("mc-b")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: B killed with %d distinct messages delivered; A's outbox for B holds %d", round, sub.distinct(), n)
		if n == 0 {
			t.Fatal("A holds no backlog for B while B is down")
		}
	}

	sub.mu.Lock()
	defer sub.mu.Unlock()
	dups := checkCrashDelivery(t, pub, sub.received)
	for _, id := range dups {
		// Allowed only for a message first delivered before a kill of B: its
		// ACK by the subscriber may not have been processed when B died.
		if r := sub.firstIn[id]; r == rounds-1 {
			t.Errorf("%s delivered twice although it was first delivered after the last kill of B", id)
		}
	}
	if len(sub.firstIn) != total {
		t.Errorf("%d distinct messages delivered, want %d", len(sub.firstIn), total)
	}
	t.Logf("%d messages, %d redelivered around the kills of B; A's connects to B: %v; took %s", len(sub.firstIn), len(dups),
		faultCounter(t, a, "slipstream_peer_connects_total", map[string]string{"peer": "mc-b", "outcome": "ok"}),
		time.Since(start).Round(time.Millisecond))
}

// A (the sending instance, which dials B) is killed twice mid-stream: once
// with its link to B up, once while its link to B is cut (so that its
// outbox for B holds a backlog of messages it ACKed to the publisher and
// that exist nowhere else). Each restart must resume the outbox. B never
// crashes, so its client gets every message exactly once, in order.
func TestMeshCrashKillSender(t *testing.T) {
	start := time.Now()
	b := startFaultInstanceHCL(t, "mc-b", meshCrashHCL("mc-b", t.TempDir(), "127.0.0.1:0"))
	proxy := newFaultProxy(t, b.addr)
	sub := newFaultClient(t, b, "sub-b")

	portA := testutil.FreePort(t)
	dirA := filepath.Join(t.TempDir(), "a")
	hclA := meshCrashHCL("mc-a", dirA, fmt.Sprintf("127.0.0.1:%d", portA), viaProxy(b, proxy))
	urlA := fmt.Sprintf("ws://127.0.0.1:%d/ws", portA)
	linked := func(up bool) {
		t.Helper()
		testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
			if l := b.Links().Get("mc-a"); (l != nil && l.Connected()) != up {
				return fmt.Errorf("mc-b's link to mc-a is not up=%v", up)
			}
			return nil
		})
	}
	distinct := func() int {
		n := map[string]bool{}
		for _, id := range sub.received() {
			n[id] = true
		}
		return len(n)
	}

	const total, rounds = 2000, 3
	pub := &crashPublisher{acked: map[string]bool{}}
	release := func() {}
	var logs []*testutil.SyncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range logs {
				t.Logf("logs of mc-a, run %d:\n%s", i, l.String())
			}
		}
	})
	backlog := 0
	for round := range rounds {
		release()
		proxy.Heal()
		proc := startProcess(t, hclA, portA)
		logs = append(logs, proc.logs)
		linked(true)
		stop, pubDone := make(chan struct{}), make(chan struct{})
		go func() { defer close(pubDone); pub.runFor(urlA, total, 64, stop) }()
		var stopOnce sync.Once
		stopPub := func() { stopOnce.Do(func() { close(stop); <-pubDone }) }
		t.Cleanup(stopPub)

		if round == rounds-1 {
			waitCount(t, "messages ACKed to the publisher", 30*time.Second, total, pub.ackedCount)
			waitCount(t, "distinct messages at the subscriber", 30*time.Second, total, distinct)
			stopPub()
			proc.kill()
			break
		}
		target := min(total, pub.ackedCount()+total/5)
		if round == 1 {
			// Cut A from B, let A take (and ACK) part of the stream: only
			// A's outbox holds it when A dies.
			waitCount(t, "messages ACKed to the publisher", 20*time.Second, min(total, pub.ackedCount()+total/10), pub.ackedCount)
			proxy.Cut()
			linked(false)
		}
		waitCount(t, "messages ACKed to the publisher", 20*time.Second, target, pub.ackedCount)
		proc.kill()
		stopPub()
		release = holdPort(t, portA)
		linked(false)
		if round == 1 {
			backlog = pub.ackedCount() - distinct()
			t.Logf("round %d: A killed with %d messages ACKed to the publisher but not at B's client", round, backlog)
			if backlog <= 0 {
				t.Fatal("no backlog in A's outbox at the kill")
			}
		}
	}

	got := sub.received()
	dups := checkCrashDelivery(t, pub, got)
	if len(dups) > 0 {
		t.Errorf("%d messages delivered twice by B, which never crashed; first %v", len(dups), dups[:min(5, len(dups))])
	}
	if len(got)-len(dups) != total {
		t.Errorf("%d distinct messages delivered, want %d", len(got)-len(dups), total)
	}
	if !slices.IsSorted(got) {
		t.Error("deliveries out of order")
	}
	t.Logf("%d messages once, in order, across 2 kills of A (backlog resumed from A's outbox: %d); dups dropped at B: %v; took %s",
		len(got), backlog, faultCounter(t, b, "slipstream_stage_messages_total", map[string]string{"outcome": "duplicate"}),
		time.Since(start).Round(time.Millisecond))
}
