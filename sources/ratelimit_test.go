package sources

import (
	"testing"
	"time"
)

// The token buckets with a fake clock: a burst passes, a small excess waits
// (slowed), a large one is refused, and refusals in every second for
// close_after cut the connection off; a pause resets the streak.
func TestRateLimit(t *testing.T) {
	now := time.Unix(1000, 0)
	var slept time.Duration
	l := DefaultLimits()
	l.MessagesPerSecond, l.BytesPerSecond, l.Burst, l.MaxWait, l.CloseAfter = 10, 1000, time.Second, 50*time.Millisecond, 3*time.Second
	r := newRateLimit(l)
	r.now = func() time.Time { return now }
	r.sleep = func(d time.Duration) { slept += d; now = now.Add(d) }
	r.last = now

	for i := range 10 { // the burst
		if refused, _ := r.take(10); refused {
			t.Fatalf("frame %d of the burst refused", i)
		}
	}
	if slept != 0 {
		t.Fatalf("slept %v within the burst", slept)
	}
	now = now.Add(60 * time.Millisecond) // 0.6 tokens back: the next waits 40ms
	if refused, _ := r.take(10); refused || slept != 40*time.Millisecond {
		t.Fatalf("a small excess: refused=%v slept=%v, want a 40ms wait", refused, slept)
	}
	if refused, cut := r.take(10); !refused || cut {
		t.Fatalf("an excess beyond max_wait: refused=%v cut=%v, want refused", refused, cut)
	}
	// Refused every 500ms for 3s: cut off.
	cut := false
	for i := 0; i < 10 && !cut; i++ {
		now = now.Add(500 * time.Millisecond)
		for range 10 {
			r.take(10) // drains what came back, then refused
		}
		_, cut = r.take(10)
	}
	if !cut {
		t.Fatal("sustained refusals did not cut the connection off")
	}
	// A pause starts a new streak.
	now = now.Add(5 * time.Second)
	r.take(10)
	for range 20 {
		r.take(10)
	}
	if _, cut := r.take(10); cut {
		t.Fatal("cut off right after a pause")
	}
	// Bytes: a frame larger than the burst passes on an empty debt, then waits.
	b := DefaultLimits()
	b.BytesPerSecond, b.MaxWait = 100, 0
	rb := newRateLimit(b)
	rb.now = func() time.Time { return now }
	rb.last = now
	if refused, _ := rb.take(500); refused {
		t.Fatal("a frame larger than the byte burst was refused on a full bucket")
	}
	if refused, _ := rb.take(1); !refused {
		t.Fatal("a frame after a 400-byte debt passed")
	}
	if newRateLimit(DefaultLimits()) != nil {
		t.Fatal("no rates set, yet a limiter")
	}
}
