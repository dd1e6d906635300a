package slipstream

import (
	"strings"
	"sync"
	"testing"
	"time"
)

func TestNewMessageID(t *testing.T) {
	const goroutines, each = 8, 5000
	ids := make(chan string, goroutines*each)
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range each {
				ids <- NewMessageID()
			}
		})
	}
	wg.Wait()
	close(ids)
	seen := make(map[string]bool, goroutines*each)
	for id := range ids {
		if len(id) != IDLen || strings.Trim(id, idAlphabet) != "" {
			t.Fatalf("bad id %q", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
	}
	a := NewMessageID()
	time.Sleep(2 * time.Millisecond)
	if b := NewMessageID(); !(a < b) {
		t.Fatalf("ids do not sort by time: %s then %s", a, b)
	}
	if err := (&Message{Type: TypeACK, MessageID: a}).Validate(nil); err != nil {
		t.Fatal(err)
	}
}

func TestEncodeID(t *testing.T) {
	var b [16]byte
	if got := encodeID(&b); got != strings.Repeat("0", IDLen) {
		t.Fatal(got)
	}
	for i := range b {
		b[i] = 0xff
	}
	if got := encodeID(&b); got != "7"+strings.Repeat("z", IDLen-1) {
		t.Fatal(got)
	}
}
