package daemon_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Issue 7: a Node.js client using the npm `ws` package (the library of the
// original clients) speaks the protocol with a Go instance:
// test/node/protocol.mjs sends SK, SA, GK and CMD, ACKs its deliveries and
// checks every ACK and reply.

// defaultPipelineHCL is instanceHCL with the state and command stages: the
// default pipeline's nine stages. listener is added to the listener block.
func defaultPipelineHCL(id, dir, listener string) string {
	return replaceOnce(instanceHCL(id, dir, listener), `stage "fanout" {}`,
		"stage \"state\" {}\n  stage \"command\" {}\n  stage \"fanout\" {}")
}

// replaceOnce replaces the one occurrence of old in s, and panics when s
// does not hold it (a config helper out of step with another).
func replaceOnce(s, old, repl string) string {
	if !strings.Contains(s, old) {
		panic(fmt.Sprintf("%q not found in the config", old))
	}
	return strings.Replace(s, old, repl, 1)
}

// nodeTool skips the test (or fails it when SLIPSTREAM_REQUIRE_TOOLS is set)
// when a tool it needs is missing.
func nodeTool(t *testing.T, missing string) {
	t.Helper()
	if os.Getenv("SLIPSTREAM_REQUIRE_TOOLS") != "" {
		t.Fatalf("%s (SLIPSTREAM_REQUIRE_TOOLS is set; scripts/test.sh installs it)", missing)
	}
	t.Skip(missing + "; set SLIPSTREAM_REQUIRE_TOOLS=1 to fail instead")
}

func TestNodeWSClient(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		nodeTool(t, "node is not installed (apt-get install -y nodejs)")
	}
	dir, err := filepath.Abs(filepath.Join("..", "..", "test", "node"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "ws", "package.json")); err != nil {
		nodeTool(t, "the npm ws package is not installed: run npm ci --prefix test/node")
	}
	in := startInstance(t, defaultPipelineHCL("node-host-1", t.TempDir(), "allow_commands = true"))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "protocol.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SLIPSTREAM_URL="+in.url)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node protocol.mjs against %s: %v\n%s", in.url, err, out)
	}
	if string(out) != "ok\n" {
		t.Fatalf("node protocol.mjs printed %q, want \"ok\\n\"", out)
	}
}
