package daemon_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/gorilla/websocket"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// publishLoop publishes SKs as fast as the connection takes them until stop
// is closed or n messages were sent, and returns the ids ACKed.
func publishLoop(url string, n int, stop <-chan struct{}) (acked []string, err error) {
	conn, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, b, err := conn.ReadMessage()
			if err != nil {
				return
			}
			m, err := slipstream.Decode(b, slipstream.DefaultLimits())
			if err == nil && m.Type == slipstream.TypeACK {
				mu.Lock()
				acked = append(acked, m.MessageID)
				mu.Unlock()
			}
		}
	}()
	for i := 0; i < n; i++ {
		select {
		case <-stop:
			i = n
			continue
		default:
		}
		_ = conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if err := conn.WriteMessage(websocket.TextMessage, []byte(sk(fmt.Sprintf("load-%06d", i), "k", fmt.Sprint(i)))); err != nil {
			break
		}
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = conn.Close()
		<-done
	}
	mu.Lock()
	defer mu.Unlock()
	return acked, nil
}

// In-process: cancelling the instance under load drains, closes everything
// and leaks no goroutine (TestMain runs goleak); every ACKed message is stored.
func TestGracefulShutdownUnderLoad(t *testing.T) {
	dir := t.TempDir()
	in := startInstance(t, instanceHCL("local-1", dir, ""))
	sub := hello(t, in.url, "sub")
	_ = sub
	stop := make(chan struct{})
	var acked []string
	var perr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		acked, perr = publishLoop(in.url, 200000, stop)
	}()
	testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n, _ := in.Store().CountOutbox("sub"); n < 200 {
			return fmt.Errorf("only %d stored", n)
		}
		return nil
	})
	in.stop() // graceful drain while the publisher still sends
	close(stop)
	wg.Wait()
	if perr != nil {
		t.Fatal(perr)
	}
	if len(acked) == 0 {
		t.Fatal("nothing was ACKed")
	}
	assertStored(t, dir, acked)
}

// assertStored reopens the store in dir (which must open cleanly) and checks
// that every ACKed id has its dedup marker: an ACK promised durability.
func assertStored(t *testing.T, dir string, acked []string) {
	t.Helper()
	st, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatalf("reopen the store: %v", err)
	}
	defer st.Close()
	missing := 0
	err = st.DB().View(func(txn *badger.Txn) error {
		for _, id := range acked {
			if _, err := txn.Get(store.DedupKey("singleton", id)); err != nil {
				missing++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if missing > 0 {
		t.Fatalf("%d of %d ACKed messages missing after the stop", missing, len(acked))
	}
}

// The binary: SIGTERM under load drains and exits 0 with Badger closed
// cleanly; a second signal during a drain stops at once.
func TestSIGTERMUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := slipstreamBinary(t)
	port := testutil.FreePort(t)
	dir := t.TempDir()
	hcl := strings.Replace(instanceHCL("local-1", filepath.Join(dir, "data"), ""), `listen       = "127.0.0.1:0"`, fmt.Sprintf(`listen = "127.0.0.1:%d"`, port), 1)
	hcl = strings.Replace(hcl, `level = "warn"`, `level = "info"`, 1)
	cfgPath := filepath.Join(dir, "p.hcl")
	if err := os.WriteFile(cfgPath, []byte(hcl), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd := exec.Command(bin, "run", "-c", cfgPath)
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("ws://127.0.0.1:%d/ws", port)
	testutil.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err
	})
	stop := make(chan struct{})
	var acked []string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		acked, _ = publishLoop(url, 500000, stop)
	}()
	time.Sleep(300 * time.Millisecond) // let load build up
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- cmd.Wait() }()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("no exit within 20s of SIGTERM\n%s", logs.String())
	}
	close(stop)
	wg.Wait()
	if !strings.Contains(logs.String(), "pipelines drained") {
		t.Errorf("no drain in the logs:\n%s", logs.String())
	}
	if len(acked) == 0 {
		t.Fatal("nothing was ACKed before SIGTERM")
	}
	assertStored(t, filepath.Join(dir, "data"), acked)
}
