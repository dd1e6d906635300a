package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/slipstream-sync/slipstream/internal/daemon"
	"github.com/slipstream-sync/slipstream/internal/testcerts"
	"github.com/slipstream-sync/slipstream/internal/testutil"
	"github.com/slipstream-sync/slipstream/pipeline"
	"go.uber.org/goleak"
)

// msgInstance is an in-process instance with the state and command stages,
// started from a config file on disk, for the get, pub, sub and cmd tests.
type msgInstance struct {
	in     *daemon.Instance
	config string // the config file; its first listener is ingress
	url    string // ingress: commands allowed
	locked string // no allow_commands
	secure string // bearer token "s3cret" required
	tls    string // wss://, mutual TLS
	caFile string // the CA of the tls listener's certificates
	dir    string // the certificates and keys: server, client
}

// startMsgInstance starts the instance; at cleanup it stops it, then checks
// that no goroutine leaked.
func startMsgInstance(t *testing.T) *msgInstance {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last
	dir := t.TempDir()
	port := testutil.FreePort(t)
	ca := testcerts.NewCA(t, "cli test CA")
	caFile := ca.WriteCA(t, dir, "ca")
	srvCert, srvKey := ca.Issue(testcerts.Leaf{CommonName: "cli-msg"}).Write(t, dir, "server")
	ca.Issue(testcerts.Leaf{CommonName: "cli-client"}).Write(t, dir, "client")
	hcl := fmt.Sprintf(`
instance {
  id       = "cli-msg"
  tags     = ["cli"]
  data_dir = %q
}
admin {
  listen = "127.0.0.1:0"
}
log {
  level = "error"
}
source "websocket_server" "ingress" {
  listen         = "0.0.0.0:%d"
  path           = "/slip"
  default_tags   = ["anon"]
  allow_commands = true
}
source "websocket_server" "locked" {
  listen       = "127.0.0.1:0"
  default_tags = ["anon"]
}
source "websocket_server" "secure" {
  listen = "127.0.0.1:0"
  tokens = ["s3cret"]
}
source "websocket_server" "tls" {
  listen         = "127.0.0.1:0"
  allow_commands = true
  tls {
    cert_file      = %q
    key_file       = %q
    client_ca_file = %q
  }
}
pipeline "sync" {
  sources = [source.websocket_server.ingress, source.websocket_server.locked, source.websocket_server.secure,
             source.websocket_server.tls]
  stage "decode" {}
  stage "loop_check" {}
  stage "dedup" {}
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
  max_attempts = 0
}
`, filepath.Join(dir, "data"), port, srvCert, srvKey, caFile)
	path := filepath.Join(dir, "msg.hcl")
	if err := os.WriteFile(path, []byte(hcl), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, diags := pipeline.Load(path, []byte(hcl))
	if diags.HasErrors() {
		t.Fatal(pipeline.FormatDiagnostics(diags))
	}
	in, err := daemon.New(cfg, daemon.Options{LogOutput: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx, context.Background()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("instance: %v", err)
		}
	})
	mi := &msgInstance{in: in, config: path, caFile: caFile, dir: dir}
	urls := make([]string, 4)
	for i, name := range []string{"ingress", "locked", "secure", "tls"} {
		src := in.Source("websocket_server." + name).(interface{ Addr() net.Addr })
		deadline := time.Now().Add(10 * time.Second)
		for src.Addr() == nil {
			if time.Now().After(deadline) {
				t.Fatalf("websocket_server.%s is not listening after 10s", name)
			}
			time.Sleep(5 * time.Millisecond)
		}
		urls[i] = "ws://" + src.Addr().String() + "/ws"
	}
	mi.url = fmt.Sprintf("ws://127.0.0.1:%d/slip", port)
	mi.locked, mi.secure = urls[1], urls[2]
	mi.tls = "wss" + strings.TrimPrefix(urls[3], "ws")
	return mi
}

// msgBackground runs a CLI command in a goroutine; wait returns its exit code.
type msgBackground struct {
	stdout, stderr testutil.SyncBuffer
	code           chan int
}

func runMsgBackground(t *testing.T, args ...string) *msgBackground {
	t.Helper()
	b := &msgBackground{code: make(chan int, 1)}
	go func() {
		err := run(context.Background(), args, &b.stdout, &b.stderr)
		b.code <- exitCode(err, &b.stderr)
	}()
	return b
}

func (b *msgBackground) wait(t *testing.T) int {
	t.Helper()
	select {
	case c := <-b.code:
		return c
	case <-time.After(30 * time.Second):
		t.Fatalf("command still running after 30s; stderr:\n%s", b.stderr.String())
	}
	return -1
}

// msgWaitFor polls fn for up to 10s.
func msgWaitFor(t *testing.T, what string, fn func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !fn() {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEndpointFromConfig(t *testing.T) {
	for _, c := range []struct{ listen, want string }{
		{"0.0.0.0:7070", "ws://127.0.0.1:7070/ws"},
		{":7070", "ws://127.0.0.1:7070/ws"},
		{"[::]:7070", "ws://[::1]:7070/ws"},
		{"10.0.0.5:8080", "ws://10.0.0.5:8080/ws"},
	} {
		if got, err := listenURL(c.listen, "/ws", false, "x.hcl"); err != nil || got != c.want {
			t.Errorf("listenURL(%q) = %q, %v; want %q", c.listen, got, err, c.want)
		}
	}
	if _, err := listenURL("127.0.0.1:0", "/ws", false, "x.hcl"); err == nil || !strings.Contains(err.Error(), "pass -url") {
		t.Errorf("port 0: %v", err)
	}

	// No -url and no ./pipelines.hcl: the default. With one in the working
	// directory: its listener.
	dir := t.TempDir()
	t.Chdir(dir)
	f := &connFlags{name: "get", stderr: io.Discard}
	if got, err := f.endpoint(io.Discard); err != nil || got != defaultWSURL {
		t.Errorf("no config: %q, %v", got, err)
	}
	hcl := "instance {\n  id = \"x\"\n}\nsource \"websocket_server\" \"in\" {\n  listen = \"0.0.0.0:7555\"\n  path = \"/sync\"\n}\n" +
		"pipeline \"p\" {\n  sources = [source.websocket_server.in]\n  stage \"decode\" {}\n  stage \"fanout\" {}\n  sinks = [sink.websocket.out]\n}\nsink \"websocket\" \"out\" {}\n"
	if err := os.WriteFile(filepath.Join(dir, "pipelines.hcl"), []byte(hcl), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := f.endpoint(io.Discard); err != nil || got != "ws://127.0.0.1:7555/sync" {
		t.Errorf("./pipelines.hcl: %q, %v", got, err)
	}
	f.url = "ws://elsewhere:1/ws"
	if got, _ := f.endpoint(io.Discard); got != "ws://elsewhere:1/ws" {
		t.Errorf("-url does not win: %q", got)
	}
}

func TestTLSFlags(t *testing.T) {
	mi := startMsgInstance(t)
	if got, err := listenURL("0.0.0.0:7443", "/ws", true, "x.hcl"); err != nil || got != "wss://127.0.0.1:7443/ws" {
		t.Errorf("listenURL with tls = %q, %v", got, err)
	}
	cert, key := filepath.Join(mi.dir, "client.pem"), filepath.Join(mi.dir, "client-key.pem")
	code, out, errOut := runCLI(t, "cmd", "slipstream.ping", "-url", mi.tls, "-ca", mi.caFile, "-cert", cert, "-cert-key", key, "-n", "1")
	if code != exitOK || !strings.Contains(out, `"pong":true`) {
		t.Fatalf("cmd over mutual TLS: exit %d: %s %s", code, out, errOut)
	}
	code, _, errOut = runCLI(t, "get", "k", "-url", mi.tls)
	if code != exitError || !strings.Contains(errOut, "pass -ca with the CA that signed the instance's certificate") {
		t.Fatalf("wss:// without -ca: exit %d: %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "get", "k", "-url", mi.tls, "-ca", mi.caFile, "-cert", cert)
	if code != exitUsage || !strings.Contains(errOut, "-cert and -cert-key go together") {
		t.Fatalf("-cert without -key: exit %d: %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "get", "k", "-url", mi.tls, "-ca", cert+".missing")
	if code != exitError || !strings.Contains(errOut, "read -ca") {
		t.Fatalf("missing -ca file: exit %d: %s", code, errOut)
	}
}
