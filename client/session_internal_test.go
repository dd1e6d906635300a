package client

import (
	"testing"
	"time"
)

// Backoff bounds double from MinBackoff up to MaxBackoff and never
// overflow, whatever the attempt and the durations.
func TestSessionBackoffBounds(t *testing.T) {
	for _, tc := range []struct{ min, max time.Duration }{
		{100 * time.Millisecond, 10 * time.Second},
		{10 * time.Second, time.Hour},
		{time.Nanosecond, time.Nanosecond},
		{time.Hour, 1<<63 - 1},
	} {
		s := &Session{o: SessionOptions{MinBackoff: tc.min, MaxBackoff: tc.max}}
		for n := range 100 {
			d := s.backoff(n)
			bound := tc.max
			if n < 62 && tc.min <= tc.max>>n {
				bound = tc.min << n
			}
			if d <= 0 || d > bound {
				t.Fatalf("min %v max %v attempt %d: backoff %v outside (0, %v]", tc.min, tc.max, n, d, bound)
			}
		}
	}
}
