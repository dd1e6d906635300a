package daemon

import (
	"testing"
	"time"
)

// A tap's queue never blocks the stage that feeds it: beyond its capacity
// events are dropped and counted.
func TestTapQueueDropsWhenFull(t *testing.T) {
	q := newTapQueue(4)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 10 {
			q.offer(TapEvent{MessageID: string(rune('a' + i))})
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("offer blocked on a full queue")
	}
	if len(q.events) != 4 || q.dropped.Load() != 6 {
		t.Fatalf("queued %d, dropped %d; want 4 and 6", len(q.events), q.dropped.Load())
	}
	if ev := <-q.events; ev.MessageID != "a" {
		t.Errorf("first queued event %q, want the oldest (a)", ev.MessageID)
	}
}
