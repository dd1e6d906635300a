package daemon_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slipstream-sync/slipstream/internal/testutil"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// slipstreamBinary builds cmd/slipstream once per test run.
func slipstreamBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "slipstream-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "slipstream")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/slipstream-sync/slipstream/cmd/slipstream").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// process is an instance running as a subprocess.
type process struct {
	t    *testing.T
	cmd  *exec.Cmd
	logs *testutil.SyncBuffer
	port int
	errc chan error
}

// startProcess runs the binary on hcl (whose websocket_server listens on
// port) and waits until the port accepts connections.
func startProcess(t *testing.T, hcl string, port int) *process {
	t.Helper()
	bin := slipstreamBinary(t)
	cfgPath := filepath.Join(t.TempDir(), "p.hcl")
	if err := os.WriteFile(cfgPath, []byte(hcl), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &process{t: t, logs: &testutil.SyncBuffer{}, port: port, errc: make(chan error, 1)}
	p.cmd = exec.Command(bin, "run", "-c", cfgPath)
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.errc <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			<-p.errc
		}
	})
	testutil.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err
	})
	return p
}

// kill sends SIGKILL and waits for the exit.
func (p *process) kill() {
	_ = p.cmd.Process.Kill()
	<-p.errc
}

// portHCL is instanceHCL listening on a fixed port.
func portHCL(id, dataDir string, port int, extra string) string {
	hcl := instanceHCL(id, dataDir, extra)
	return strings.Replace(hcl, `listen       = "127.0.0.1:0"`, fmt.Sprintf(`listen = "127.0.0.1:%d"`, port), 1)
}
