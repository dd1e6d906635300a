package client_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/client"
	"github.com/slipstream-sync/slipstream/client/badgerdedup"
	"github.com/slipstream-sync/slipstream/client/redisdedup"
	"github.com/slipstream-sync/slipstream/internal/testredis"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// redundantPair starts two instances of one cluster group ("g"), not
// linked: the set-up where an application publishes every message to both
// and receives it from both.
func redundantPair(t *testing.T) (a1, a2 string) {
	t.Helper()
	a1, _ = startInstance(t, configHCL(t, "a1", "g", []string{"g"}, ""))
	a2, _ = startInstance(t, configHCL(t, "a2", "g", []string{"g"}, ""))
	return a1, a2
}

// publishTo publishes a copy of each message (same messageId) through a
// client of each url at the same time, as a redundant publisher does.
func publishTo(t *testing.T, msgs []*slipstream.Message, urls ...string) {
	t.Helper()
	errs := make(chan error, len(urls))
	for _, url := range urls {
		c := dial(t, url, client.Options{})
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for _, m := range msgs {
				cp := *m
				if _, err := c.Publish(ctx, &cp); err != nil {
					errs <- fmt.Errorf("publish %s to %s: %w", m.MessageID, url, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range urls {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func messages(prefix string, n int) ([]*slipstream.Message, []string) {
	msgs := make([]*slipstream.Message, n)
	ids := make([]string, n)
	for i := range msgs {
		m := sk(fmt.Sprintf("%s%d", prefix, i), fmt.Sprint(i))
		m.MessageID = slipstream.NewMessageID()
		m.TargetedTags = []string{"r"}
		msgs[i], ids[i] = m, m.MessageID
	}
	return msgs, ids
}

// receiveBoth subscribes one session to each of a1 and a2 with its own
// store, all adding to log; it returns the sessions.
func receiveBoth(t *testing.T, log *handledLog, a1, a2 string, store1, store2 client.DedupStore) (*client.Session, *client.Session) {
	t.Helper()
	var sessions []*client.Session
	for i, x := range []struct {
		url   string
		store client.DedupStore
	}{{a1, store1}, {a2, store2}} {
		s := connect(t, x.url, client.SessionOptions{Options: client.Options{ID: fmt.Sprintf("recv-%d", i+1), Tags: []string{"r"}}})
		subscribe(t, s, func(_ context.Context, d *client.Delivery) error {
			log.add(d.Msg.MessageID)
			time.Sleep(time.Millisecond) // a handler takes time: the other receiver has to wait for its claim
			return nil
		}, client.SubscribeOptions{Dedup: x.store, Lease: 5 * time.Second})
		sessions = append(sessions, s)
	}
	return sessions[0], sessions[1]
}

// checkOnceEach waits until both receivers have acknowledged every message
// (each got it from its instance) and checks the handler ran once per
// message in all.
func checkOnceEach(t *testing.T, log *handledLog, ids []string, r1, r2 *client.Session) {
	t.Helper()
	n := uint64(len(ids))
	testutil.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		s1, s2 := r1.Stats(), r2.Stats()
		if got := s1.Handled + s1.Duplicates + s2.Handled + s2.Duplicates; got < 2*n {
			return fmt.Errorf("%d of %d deliveries settled: %+v %+v", got, 2*n, s1, s2)
		}
		return nil
	})
	if m := log.missing(ids); len(m) > 0 {
		t.Errorf("%d messages never handled, e.g. %s", len(m), m[0])
	}
	if d := log.twice(); len(d) > 0 {
		t.Errorf("%d messages handled twice, e.g. %s", len(d), d[0])
	}
	s1, s2 := r1.Stats(), r2.Stats()
	if s1.Handled+s2.Handled != n || s1.Duplicates+s2.Duplicates != n {
		t.Errorf("handled %d+%d, duplicates %d+%d; want %d of each in all", s1.Handled, s2.Handled, s1.Duplicates, s2.Duplicates, n)
	}
	t.Logf("receiver 1 %+v, receiver 2 %+v", s1, s2)
}

// One process connected to two redundant instances, one MemoryDedup shared
// by its two sessions: each message is handled once though both deliver it.
func TestReceiverDedupMemoryRedundantInstances(t *testing.T) {
	a1, a2 := redundantPair(t)
	log := newHandledLog()
	store := client.NewMemoryDedup(0)
	r1, r2 := receiveBoth(t, log, a1, a2, store, store)
	msgs, ids := messages("m", 40)
	publishTo(t, msgs, a1, a2)
	checkOnceEach(t, log, ids, r1, r2)
}

// Two receivers (as in two processes: two Redis clients) share one Redis:
// each message is handled once.
func TestReceiverDedupRedisSharedByTwoReceivers(t *testing.T) {
	srv := testredis.Start(t)
	a1, a2 := redundantPair(t)
	log := newHandledLog()
	r1, r2 := receiveBoth(t, log, a1, a2, redisdedup.New(srv.Client(), ""), redisdedup.New(srv.Client(), ""))
	msgs, ids := messages("r", 40)
	publishTo(t, msgs, a1, a2)
	checkOnceEach(t, log, ids, r1, r2)
}

// A receiver with a Badger store handles messages from a1, restarts (a new
// session, the store closed and opened again) and then receives the same
// messages from a2: they are acknowledged without being handled again.
func TestReceiverDedupBadgerAcrossRestart(t *testing.T) {
	a1, a2 := redundantPair(t)
	dir := filepath.Join(t.TempDir(), "dedup")
	log := newHandledLog()
	msgs, ids := messages("b", 20)

	run := func(url string, msgs []*slipstream.Message, want func(st client.SessionStats) error) {
		store, err := badgerdedup.Open(dir)
		if err != nil {
			t.Fatalf("badgerdedup.Open: %v", err)
		}
		defer store.Close()
		s := connect(t, url, client.SessionOptions{Options: client.Options{ID: "recv", Tags: []string{"r"}}})
		defer s.Close()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- s.Subscribe(ctx, func(_ context.Context, d *client.Delivery) error {
				log.add(d.Msg.MessageID)
				return nil
			}, client.SubscribeOptions{Dedup: store})
		}()
		publishTo(t, msgs, url)
		testutil.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error { return want(s.Stats()) })
		cancel()
		<-done
	}

	run(a1, msgs, func(st client.SessionStats) error {
		if st.Handled != 20 {
			return fmt.Errorf("first life: %+v, want 20 handled", st)
		}
		return nil
	})
	more, moreIDs := messages("c", 5)
	run(a2, append(msgs, more...), func(st client.SessionStats) error {
		if st.Handled != 5 || st.Duplicates != 20 {
			return fmt.Errorf("after the restart: %+v, want 5 handled and 20 duplicates", st)
		}
		return nil
	})
	if m := log.missing(append(ids, moreIDs...)); len(m) > 0 {
		t.Errorf("never handled: %v", m)
	}
	if d := log.twice(); len(d) > 0 {
		t.Errorf("handled twice across the restart: %v", d)
	}
}
