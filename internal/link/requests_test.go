package link

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// The request table: ids are remembered for the TTL and then forgotten
// (also for the per-link and total counts), a known id is refused, and the
// limits hold.
func TestRequests(t *testing.T) {
	now := time.Unix(100, 0)
	q := newRequests()
	q.now = func() time.Time { return now }
	q.Configure(10*time.Second, 4, 2)

	if err := q.Remember("q1", "a"); err != nil {
		t.Fatal(err)
	}
	if err := q.Remember("q1", "b"); !errors.Is(err, ErrKnownRequest) {
		t.Fatalf("known id: %v", err)
	}
	q.Remember("q2", "a")
	if err := q.Remember("q3", "a"); !errors.Is(err, ErrTooManyLinkRequests) {
		t.Fatalf("third of link a: %v", err)
	}
	now = now.Add(5 * time.Second)
	q.Remember("q4", "b")
	q.Remember("q5", "c")
	if err := q.Remember("q6", "d"); !errors.Is(err, ErrTooManyRequests) {
		t.Fatalf("fifth in a table of 4: %v", err)
	}
	if from, ok := q.Lookup("q1"); !ok || from != "a" {
		t.Fatalf("Lookup(q1) = %q %v", from, ok)
	}
	now = now.Add(5 * time.Second) // q1, q2 expire
	if _, ok := q.Lookup("q1"); ok {
		t.Fatal("q1 found after its TTL")
	}
	if err := q.Remember("q7", "a"); err != nil { // frees a's count and the table
		t.Fatalf("after expiry: %v", err)
	}
	if q.Len() != 3 {
		t.Fatalf("Len = %d, want 3 (q4 q5 q7)", q.Len())
	}
	// Many entries over time: the FIFO is compacted, nothing leaks.
	q.Configure(time.Second, 100000, 100000)
	for i := range 50000 {
		now = now.Add(time.Millisecond)
		if err := q.Remember(fmt.Sprint("x", i), "z"); err != nil {
			t.Fatal(err)
		}
	}
	if q.Len() > 1001 || len(q.order)-q.head > 1001 || len(q.order) > 3000 {
		t.Fatalf("Len %d, FIFO %d (head %d): expired entries are kept", q.Len(), len(q.order), q.head)
	}
}
