// Package testutil holds small helpers that tests in several packages share:
// a buffer safe for concurrent writers, free loopback ports and polling
// until a condition holds.
package testutil

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// SyncBuffer is a bytes.Buffer safe for concurrent writers and readers: the
// log output of an instance, the output of a command run in a goroutine.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ReservePort listens on a loopback TCP port below the kernel's ephemeral
// range, for a server that must listen on a port known in advance (or come
// back on it): close the listener just before the server binds. A port
// from the ephemeral range (what port 0 gives) can be taken in between by
// any outgoing connection, of this test or of another package's tests
// running beside it; a port below it is only ever taken by a server
// naming it.
func ReservePort(t testing.TB) net.Listener {
	t.Helper()
	lo := ephemeralLow()
	span := min(lo-1024, 12000)
	for range 200 {
		port := lo - 1 - rand.IntN(span)
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			return l
		}
	}
	t.Fatalf("no free loopback port below %d after 200 tries", lo)
	return nil
}

// ephemeralLow is the low end of the kernel's ephemeral port range (Linux;
// 32768, its default, elsewhere or when unreadable).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil || lo < 2048 {
		return 32768
	}
	return lo
}

// FreePort returns a loopback TCP port that was free a moment ago, below
// the ephemeral range (see ReservePort).
func FreePort(t testing.TB) int {
	t.Helper()
	l := ReservePort(t)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreeAddr is FreePort as "127.0.0.1:port".
func FreeAddr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", FreePort(t))
}

// CheckFor calls fn every interval until it returns nil, failing the test
// with fn's last error once timeout has passed.
func CheckFor(t testing.TB, timeout, interval time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %s: %v", timeout, err)
		}
		time.Sleep(interval)
	}
}
