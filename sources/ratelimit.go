package sources

import "time"

// rateLimit is one connection's token buckets (limits block of
// websocket_server): frames per second and bytes per second. It is used by
// the connection's read loop only, so it needs no lock.
//
// A frame over the rate waits for the buckets up to maxWait (the sender is
// slowed down by TCP back-pressure while the loop sleeps); beyond that it is
// refused. A connection held back (slowed or refused) in every second for
// closeAfter is cut off: it is not bursting, it is flooding.
type rateLimit struct {
	msgRate, byteRate   float64 // per second; 0: no limit
	msgBurst, byteBurst float64
	msgs, bytes         float64 // tokens; bytes may go negative (a debt) for a frame larger than the burst
	last                time.Time
	maxWait, closeAfter time.Duration

	streakStart, lastHeld time.Time

	now   func() time.Time
	sleep func(time.Duration)
}

// refusalPause bounds how long the read loop pauses after a refusal.
const refusalPause = 250 * time.Millisecond

// newRateLimit returns nil when l sets no rate.
func newRateLimit(l LimitsConfig) *rateLimit {
	if l.MessagesPerSecond <= 0 && l.BytesPerSecond <= 0 {
		return nil
	}
	b := l.Burst.Seconds()
	r := &rateLimit{msgRate: l.MessagesPerSecond, byteRate: l.BytesPerSecond,
		msgBurst: max(1, l.MessagesPerSecond*b), byteBurst: l.BytesPerSecond * b,
		maxWait: l.MaxWait, closeAfter: l.CloseAfter, now: time.Now, sleep: time.Sleep}
	r.msgs, r.bytes, r.last = r.msgBurst, r.byteBurst, r.now()
	return r
}

func (r *rateLimit) refill(now time.Time) {
	dt := now.Sub(r.last).Seconds()
	r.last = now
	if r.msgRate > 0 {
		r.msgs = min(r.msgBurst, r.msgs+dt*r.msgRate)
	}
	if r.byteRate > 0 {
		r.bytes = min(r.byteBurst, r.bytes+dt*r.byteRate)
	}
}

// wait is how long until a frame may pass.
func (r *rateLimit) wait() time.Duration {
	var w float64
	if r.msgRate > 0 && r.msgs < 1 {
		w = (1 - r.msgs) / r.msgRate
	}
	if r.byteRate > 0 && r.bytes < 0 {
		w = max(w, -r.bytes/r.byteRate)
	}
	return time.Duration(w * float64(time.Second))
}

// take admits a frame of n bytes, waiting up to maxWait. It reports whether
// the frame is refused, and whether the connection has been refused for so
// long that it must be closed.
func (r *rateLimit) take(n int) (refused, cutOff bool) {
	r.refill(r.now())
	held := false
	if w := r.wait(); w > 0 && w <= r.maxWait {
		held = true
		r.sleep(w)
		r.refill(r.now())
	}
	w := r.wait()
	refused = w > 0
	if refused {
		// Stop reading until the bucket refills (at most refusalPause): a
		// flooder is held back by TCP instead of costing a refusal per frame.
		r.sleep(min(w, refusalPause))
	} else {
		if r.msgRate > 0 {
			r.msgs--
		}
		if r.byteRate > 0 {
			r.bytes -= float64(n)
		}
	}
	if !held && !refused {
		return false, false
	}
	now := r.now()
	if now.Sub(r.lastHeld) > time.Second {
		r.streakStart = now // a new streak of being held back
	}
	r.lastHeld = now
	return refused, now.Sub(r.streakStart) >= r.closeAfter
}
