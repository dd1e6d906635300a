// Package testredis runs real redis-server processes for tests: each on a
// free loopback port, without persistence (--save ” --appendonly no), as a
// subprocess the test owns. A test is skipped when redis-server is not
// installed, unless SLIPSTREAM_REQUIRE_TOOLS is set (CI), where it fails.
package testredis

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/slipstream-sync/slipstream/internal/redisconn"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// Server is one redis-server subprocess.
type Server struct {
	t    testing.TB
	bin  string
	Port int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// waitExit reaps the server process; it runs while the server does.
func waitExit(cmd *exec.Cmd, done chan<- struct{}) {
	_ = cmd.Wait()
	close(done)
}

// IgnoreLeaks is the goleak option that ignores the goroutines of running
// servers (they end in the test's cleanup, after goleak's check).
func IgnoreLeaks() goleak.Option {
	return goleak.IgnoreAnyFunction("github.com/slipstream-sync/slipstream/internal/testredis.waitExit")
}

// Binary returns the path of redis-server, skipping (or failing, when
// SLIPSTREAM_REQUIRE_TOOLS is set) the test when it is absent.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("SLIPSTREAM_REQUIRE_TOOLS") != "" {
			t.Fatalf("redis-server not found (SLIPSTREAM_REQUIRE_TOOLS is set): apt-get install -y redis-server, or run scripts/test.sh")
		}
		t.Skip("redis-server not installed (apt-get install -y redis-server); set SLIPSTREAM_REQUIRE_TOOLS=1 to fail instead")
	}
	return bin
}

// Start starts a redis-server on a free loopback port and stops it when the
// test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, bin: Binary(t), Port: testutil.FreePort(t)}
	s.Restart()
	t.Cleanup(s.Stop)
	return s
}

// URL is the server's redis:// URL (database 0).
func (s *Server) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", s.Port) }

// Addr is host:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

// Client returns a go-redis client of the server, closed when the test ends.
func (s *Server) Client() *redis.Client {
	c, err := redisconn.New(s.URL(), 2*time.Second)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// Restart starts the server again on the same port (an empty one: nothing
// is persisted) and waits until it answers PING.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		s.t.Fatal("testredis: Restart while running")
	}
	out, err := os.CreateTemp("", "redis-server-*.log")
	if err != nil {
		s.t.Fatal(err)
	}
	defer os.Remove(out.Name())
	defer out.Close()
	cmd := exec.Command(s.bin, "--save", "", "--appendonly", "no", "--port", strconv.Itoa(s.Port),
		"--bind", "127.0.0.1", "--protected-mode", "no")
	cmd.Stdout, cmd.Stderr = out, out // a file: no copying goroutine
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	done := make(chan struct{})
	go waitExit(cmd, done)
	s.cmd, s.done = cmd, done
	c, err := redisconn.New(s.URL(), 500*time.Millisecond)
	if err != nil {
		s.t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		select {
		case <-done:
			s.cmd = nil
			b, _ := os.ReadFile(out.Name())
			s.t.Fatalf("redis-server exited at start: %s", b)
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on port %d does not answer PING within 10s: %v", s.Port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server (SIGKILL: an outage, nothing saved) and waits for
// it to exit. It is idempotent.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}
