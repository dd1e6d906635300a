package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/client"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// connect opens a session, failing the test after 10s; it is closed at
// cleanup.
func connect(t *testing.T, url string, o client.SessionOptions) *client.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if o.MinBackoff == 0 {
		o.MinBackoff, o.MaxBackoff = 10*time.Millisecond, 200*time.Millisecond
	}
	s, err := client.Connect(ctx, url, o)
	if err != nil {
		t.Fatalf("Connect %s: %v", o.ID, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// handledLog records, per messageId, how often a handler saw it and in
// which order.
type handledLog struct {
	mu    sync.Mutex
	seen  map[string]int
	order []string
	calls int
}

func newHandledLog() *handledLog { return &handledLog{seen: map[string]int{}} }

func (l *handledLog) add(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen[id]++
	l.calls++
	l.order = append(l.order, id)
	return l.seen[id]
}

func (l *handledLog) count(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen[id]
}

// missing returns the ids of want that were never seen.
func (l *handledLog) missing(want []string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, id := range want {
		if l.seen[id] == 0 {
			out = append(out, id)
		}
	}
	return out
}

// twice returns the ids seen more than once.
func (l *handledLog) twice() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for id, n := range l.seen {
		if n > 1 {
			out = append(out, id)
		}
	}
	return out
}

func (l *handledLog) total() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls
}

// subscribe runs s.Subscribe with h in a goroutine until the test ends.
func subscribe(t *testing.T, s *client.Session, h client.Handler, o client.SubscribeOptions) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Subscribe(ctx, h, o) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Subscribe returned %v, want context.Canceled", err)
		}
	})
}

// fastRedelivery makes an instance config send unacknowledged deliveries
// again after 500ms (long enough for an ACK to be processed on a loaded
// machine).
func fastRedelivery(hcl string) string {
	return strings.Replace(hcl, `ack_timeout  = "10s"`, `ack_timeout  = "500ms"
  backoff_max  = "1s"`, 1)
}

func TestSessionSubscribeAcksAfterHandlerAndRedeliversAfterError(t *testing.T) {
	url, _ := startInstance(t, fastRedelivery(instanceHCL(t, "inst-1")))
	recv := connect(t, url, client.SessionOptions{Options: client.Options{ID: "recv", Tags: []string{"r"}}})
	pub := connect(t, url, client.SessionOptions{})

	log := newHandledLog()
	var failOnce sync.Once
	failID := ""
	var failed []error
	var mu sync.Mutex
	subscribe(t, recv, func(_ context.Context, d *client.Delivery) error {
		n := log.add(d.Msg.MessageID)
		if d.Msg.Key == "k5" && n == 1 {
			var err error
			failOnce.Do(func() { err = errors.New("the database is down") })
			return err
		}
		return nil
	}, client.SubscribeOptions{OnError: func(d *client.Delivery, err error) {
		mu.Lock()
		defer mu.Unlock()
		failID = d.Msg.MessageID
		failed = append(failed, err)
	}})

	ctx := within(t, 10*time.Second)
	var ids []string
	for i := range 10 {
		ack, err := pub.SetKey(ctx, fmt.Sprintf("k%d", i), i, client.Targeting("r"))
		if err != nil {
			t.Fatalf("SetKey %d: %v", i, err)
		}
		ids = append(ids, ack.MessageID)
	}
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if m := log.missing(ids); len(m) > 0 {
			return fmt.Errorf("not handled yet: %v", m)
		}
		if n := log.count(ids[5]); n < 2 {
			return fmt.Errorf("k5 handled %d times, want a redelivery after its handler failed", n)
		}
		return nil
	})
	// Every delivery that the handler accepted was acknowledged: after
	// several ack timeouts nothing comes again.
	time.Sleep(2 * time.Second)
	if got := log.total(); got != 11 {
		t.Errorf("handler calls = %d, want 11 (10 messages, k5 twice)", got)
	}
	for i, id := range ids {
		want := 1
		if i == 5 {
			want = 2
		}
		if n := log.count(id); n != want {
			t.Errorf("message %d (k%d) handled %d times, want %d", i, i, n, want)
		}
	}
	mu.Lock()
	if failID != ids[5] || len(failed) != 1 || failed[0].Error() != "the database is down" {
		t.Errorf("OnError got %v for %s, want the handler's error once for %s", failed, failID, ids[5])
	}
	mu.Unlock()
	// The redelivery came after the messages that followed k5.
	log.mu.Lock()
	last := log.order[len(log.order)-1]
	log.mu.Unlock()
	if last != ids[5] {
		t.Errorf("last handled %s, want the redelivered k5 %s", last, ids[5])
	}
	st := recv.Stats()
	if st.Handled != 10 || st.Failed != 1 || st.Connects != 1 {
		t.Errorf("stats = %+v, want 10 handled, 1 failed, 1 connect", st)
	}
}

func TestSessionSubscribeOnlyOnce(t *testing.T) {
	url, _ := startInstance(t, instanceHCL(t, "inst-1"))
	s := connect(t, url, client.SessionOptions{Options: client.Options{ID: "recv"}})
	running := make(chan struct{}, 1)
	subscribe(t, s, func(context.Context, *client.Delivery) error {
		select {
		case running <- struct{}{}:
		default:
		}
		return nil
	}, client.SubscribeOptions{})
	// A delivery handled: the first Subscribe runs.
	pub := connect(t, url, client.SessionOptions{})
	if _, err := pub.SetKey(within(t, 10*time.Second), "k", 1); err != nil {
		t.Fatal(err)
	}
	<-running
	if err := s.Subscribe(context.Background(), nil, client.SubscribeOptions{}); !errors.Is(err, client.ErrSubscribed) {
		t.Errorf("second Subscribe = %v, want ErrSubscribed", err)
	}
	auto := connect(t, url, client.SessionOptions{Options: client.Options{AutoAck: true}})
	if err := auto.Subscribe(context.Background(), nil, client.SubscribeOptions{}); err == nil || !strings.Contains(err.Error(), "AutoAck") {
		t.Errorf("Subscribe on an AutoAck session = %v, want an error naming AutoAck", err)
	}
}

// fixedPort gives the instance's ingress listener addr instead of port 0.
func fixedPort(hcl, addr string) string {
	return strings.Replace(hcl, `listen         = "127.0.0.1:0"`, fmt.Sprintf(`listen         = %q`, addr), 1)
}

// TestSessionReconnectsWithoutLoss restarts the instance twice while a
// session publishes and another subscribes: every publish is ACKed (retried
// on the next connection with the same messageId), every message reaches
// the subscriber, and with a dedup store the handler sees each once.
func TestSessionReconnectsWithoutLoss(t *testing.T) {
	addr := testutil.FreeAddr(t)
	hcl := fixedPort(fastRedelivery(instanceHCL(t, "inst-1")), addr)
	url, stop := startInstance(t, hcl)

	var downs sync.Map
	recv := connect(t, url, client.SessionOptions{
		Options:      client.Options{ID: "recv", Tags: []string{"r"}},
		OnDisconnect: func(err error) { downs.Store("recv", err) },
	})
	pub := connect(t, url, client.SessionOptions{Options: client.Options{ID: "pub"}})
	log := newHandledLog()
	subscribe(t, recv, func(_ context.Context, d *client.Delivery) error {
		log.add(d.Msg.MessageID)
		return nil
	}, client.SubscribeOptions{Dedup: client.NewMemoryDedup(0)})

	const n = 300
	ids := make([]string, n)
	published := make(chan int, n)
	pubErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for i := range n {
			m := sk(fmt.Sprintf("k%d", i), fmt.Sprint(i))
			m.TargetedTags = []string{"r"}
			if _, err := pub.Publish(ctx, m); err != nil {
				pubErr <- fmt.Errorf("publish %d: %w", i, err)
				return
			}
			ids[i] = m.MessageID
			published <- i
		}
		pubErr <- nil
	}()
	restarts := 0
	for i := 0; i < n; i++ {
		select {
		case <-published:
		case err := <-pubErr:
			t.Fatal(err)
		case <-time.After(30 * time.Second):
			t.Fatalf("publish %d not ACKed within 30s", i)
		}
		if i == n/3 || i == 2*n/3 {
			stop()
			_, stop = startInstance(t, hcl)
			restarts++
		}
	}
	if err := <-pubErr; err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if m := log.missing(ids); len(m) > 0 {
			return fmt.Errorf("%d messages not delivered yet, e.g. %s", len(m), m[0])
		}
		return nil
	})
	if d := log.twice(); len(d) > 0 {
		t.Errorf("handler saw %d messages twice despite the dedup store, e.g. %s", len(d), d[0])
	}
	st := recv.Stats()
	if st.Connects < 1+uint64(restarts) {
		t.Errorf("receiver connected %d times over %d restarts", st.Connects, restarts)
	}
	if _, ok := downs.Load("recv"); !ok {
		t.Errorf("OnDisconnect was never called")
	}
	t.Logf("receiver stats %+v (duplicates are redeliveries the store answered)", st)
}

func TestConnectRetriesUntilTheInstanceIsUp(t *testing.T) {
	addr := testutil.FreeAddr(t)
	hcl := fixedPort(instanceHCL(t, "inst-1"), addr)
	type result struct {
		s   *client.Session
		err error
	}
	got := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		s, err := client.Connect(ctx, "ws://"+addr+"/ws", client.SessionOptions{
			Options: client.Options{ID: "early"}, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		})
		got <- result{s, err}
	}()
	time.Sleep(300 * time.Millisecond)
	startInstance(t, hcl)
	r := <-got
	if r.err != nil {
		t.Fatalf("Connect: %v", r.err)
	}
	defer r.s.Close()
	if !r.s.Connected() {
		t.Error("Connected() = false after Connect")
	}
	ctx := within(t, 5*time.Second)
	if _, err := r.s.Command(ctx, "slipstream.ping", nil); err != nil {
		t.Errorf("ping over the session: %v", err)
	}
}

func TestConnectDoesNotRetryRefusals(t *testing.T) {
	url, _ := startInstance(t, instanceHCL(t, "inst-1"))
	ctx := within(t, 10*time.Second)
	_, err := client.Connect(ctx, strings.TrimSuffix(url, "/ws")+"/nowhere", client.SessionOptions{})
	var de *client.DialError
	if !errors.As(err, &de) || de.StatusCode != 404 {
		t.Fatalf("Connect to a wrong path = %v, want a DialError with 404", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("Connect retried a 404 until its context ended")
	}
	// A HELLO refused with ERR (another role's id): not retried either.
	_, err = client.Connect(ctx, url, client.SessionOptions{Options: client.Options{ID: "inst-1"}})
	var refused *slipstream.Error
	if !errors.As(err, &refused) {
		t.Fatalf("Connect claiming the instance's own id = %v, want the instance's ERR", err)
	}
}

func TestSessionTypedCalls(t *testing.T) {
	url, _ := startInstance(t, instanceHCL(t, "inst-1"))
	s := connect(t, url, client.SessionOptions{})
	ctx := within(t, 10*time.Second)

	if _, err := s.SetKey(ctx, "order:1", map[string]string{"status": "paid"}); err != nil {
		t.Fatalf("SetKey: %v", err)
	}
	if _, err := s.SetArray(ctx, "hosts", []string{"a", "b"}); err != nil {
		t.Fatalf("SetArray: %v", err)
	}
	if _, err := s.SetWeighted(ctx, "split", map[string]float64{"acq-a": 70, "acq-b": 30}); err != nil {
		t.Fatalf("SetWeighted: %v", err)
	}
	v, found, err := s.Get(ctx, "order:1")
	if err != nil || !found || string(v) != `{"status":"paid"}` {
		t.Errorf("Get = %s %v %v", v, found, err)
	}
	a, found, err := s.GetArray(ctx, "hosts")
	if err != nil || !found || len(a) != 2 || string(a[1]) != `"b"` {
		t.Errorf("GetArray = %s %v %v", a, found, err)
	}
	w, found, err := s.GetWeighted(ctx, "split")
	if err != nil || !found || w["acq-a"] != 70 || w["acq-b"] != 30 {
		t.Errorf("GetWeighted = %v %v %v", w, found, err)
	}
	if _, err := s.DeleteKey(ctx, "order:1"); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	if _, found, err := s.Get(ctx, "order:1"); err != nil || found {
		t.Errorf("Get after DeleteKey: found %v, err %v", found, err)
	}
	// Bad values are refused before anything is sent.
	if _, err := s.SetArray(ctx, "hosts", map[string]int{"a": 1}); err == nil {
		t.Error("SetArray with an object: no error")
	}
	if _, err := s.SetWeighted(ctx, "split", map[string]float64{"x": -1}); err == nil {
		t.Error("SetWeighted with a negative weight: no error")
	}
	if _, err := s.SetKey(ctx, "k", json.RawMessage(`{"a":`)); err == nil {
		t.Error("SetKey with invalid raw JSON: no error")
	}
	// The instance's refusal is a *slipstream.Error, not retried.
	_, err = s.SetKey(ctx, "", 1)
	var refused *slipstream.Error
	if !errors.As(err, &refused) || refused.Code != slipstream.CodeInvalid {
		t.Errorf("SetKey with an empty key = %v, want ERR invalid", err)
	}
}

func TestSessionCloseEndsCalls(t *testing.T) {
	url, stop := startInstance(t, instanceHCL(t, "inst-1"))
	s := connect(t, url, client.SessionOptions{})
	stop() // the session redials in vain
	testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if s.Connected() {
			return errors.New("still connected")
		}
		return nil
	})
	done := make(chan error, 1)
	go func() {
		_, err := s.SetKey(context.Background(), "k", 1)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	s.Close()
	if err := <-done; !errors.Is(err, client.ErrClosed) {
		t.Errorf("SetKey waiting for a connection, then Close = %v, want ErrClosed", err)
	}
	if err := s.Subscribe(context.Background(), nil, client.SubscribeOptions{}); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Subscribe after Close = %v, want ErrClosed", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.Client(ctx); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Client after Close = %v", err)
	}
}
