package daemon_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Issue 7: a Node.js client using the npm `ws` package (the library of the
// original clients) speaks the protocol with a Go instance:
// test/node/protocol.mjs sends SK, SA, GK and CMD, ACKs its deliveries and
// checks every ACK and reply.

// nodeHCL is the default pipeline (all nine stages) on free loopback ports,
// its listener allowed to issue slipstream.* commands.
func nodeHCL(dir string) string {
	return fmt.Sprintf(`
instance {
  id       = "node-host-1"
  tags     = ["local"]
  data_dir = %q
}
admin {
  listen = "127.0.0.1:0"
}
log {
  level = "warn"
}
source "websocket_server" "ingress" {
  listen         = "127.0.0.1:0"
  default_tags   = ["local"]
  allow_commands = true
}
pipeline "sync" {
  sources = [source.websocket_server.ingress]
  stage "decode" {}
  stage "loop_check" {}
  stage "dedup" {
    window = "1h"
  }
  stage "tag_filter" {}
  stage "persist" {}
  stage "ack" {}
  stage "state" {}
  stage "command" {}
  stage "fanout" {}
  sinks = [sink.websocket.links]
}
sink "websocket" "links" {
  ack_timeout  = "2s"
  max_attempts = 5
}
`, dir)
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
	in := startInstance(t, nodeHCL(t.TempDir()))

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
