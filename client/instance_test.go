package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slipstream-sync/slipstream/internal/daemon"
	"github.com/slipstream-sync/slipstream/internal/testutil"
	"github.com/slipstream-sync/slipstream/pipeline"

	// Register every kind.
	_ "github.com/slipstream-sync/slipstream/sinks"
	_ "github.com/slipstream-sync/slipstream/sources"
	_ "github.com/slipstream-sync/slipstream/stages"
)

// instanceHCL is configHCL for instance id of cluster group "test-group",
// tagged "test", without peers.
func instanceHCL(t *testing.T, id string) string {
	return configHCL(t, id, "test-group", []string{"test"}, "")
}

// configHCL is a one-instance config on 127.0.0.1 with its data in a fresh
// temp dir, the default pipeline (state and command included) and two
// listeners: "ingress" may issue slipstream.* commands, "locked" may not.
// peers are websocket_client peer blocks (HCL) this instance dials.
func configHCL(t *testing.T, id, cluster string, tags []string, peers string) string {
	t.Helper()
	return configText(id, cluster, tags, peers, t.TempDir())
}

// configText is configHCL with its data in dir.
func configText(id, cluster string, tags []string, peers, dir string) string {
	q := make([]string, len(tags))
	for i, tag := range tags {
		q[i] = fmt.Sprintf("%q", tag)
	}
	client, ref := "", ""
	if peers != "" {
		client = fmt.Sprintf(`
source "websocket_client" "peers" {
%s
  retry {
    interval     = "20ms"
    max_interval = "200ms"
    attempts     = 0
    cooldown     = "1s"
  }
}
`, peers)
		ref = ", source.websocket_client.peers"
	}
	return fmt.Sprintf(`
instance {
  id            = %q
  cluster_group = %q
  tags          = [%s]
  data_dir      = %q
}
admin {
  listen = "127.0.0.1:0"
}
log {
  level  = "debug"
  format = "text"
}
source "websocket_server" "ingress" {
  listen         = "127.0.0.1:0"
  default_tags   = ["anon"]
  allow_commands = true
}
source "websocket_server" "locked" {
  listen       = "127.0.0.1:0"
  default_tags = ["anon"]
}
%s
pipeline "sync" {
  sources = [source.websocket_server.ingress, source.websocket_server.locked%s]
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
  ack_timeout  = "10s"
  max_attempts = 3
}
`, id, cluster, strings.Join(q, ", "), dir, client, ref)
}

// startInstance runs an instance from hcl in-process and returns its
// WebSocket URL. stop drains it (and is also run at cleanup); the instance's
// logs are printed when the test fails.
func startInstance(t *testing.T, hcl string) (url string, stop func()) {
	t.Helper()
	urls, stop := startInstanceSources(t, hcl, "websocket_server.ingress")
	return urls[0], stop
}

// startInstanceSources is startInstance for an instance with several
// listeners: it returns the WebSocket URL of each source named.
func startInstanceSources(t *testing.T, hcl string, sources ...string) (urls []string, stop func()) {
	t.Helper()
	cfg, diags := pipeline.Load("test.hcl", []byte(hcl))
	if diags.HasErrors() {
		t.Fatalf("config:\n%s", pipeline.FormatDiagnostics(diags))
	}
	logs := &testutil.SyncBuffer{}
	in, err := daemon.New(cfg, daemon.Options{LogOutput: logs})
	if err != nil {
		t.Fatalf("daemon.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	hard, hardCancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- in.Run(ctx, hard) }()

	stop = sync.OnceFunc(func() {
		cancel()
		timer := time.NewTimer(20 * time.Second)
		defer timer.Stop()
		select {
		case err = <-ran:
		case <-timer.C:
			hardCancel()
			err = errors.Join(errors.New("graceful stop took over 20s"), <-ran)
		}
		hardCancel()
	})
	t.Cleanup(func() {
		stop()
		if err != nil {
			t.Errorf("instance Run: %v", err)
		}
		if t.Failed() {
			t.Logf("instance logs:\n%s", logs.String())
		}
	})

	for _, name := range sources {
		src, ok := in.Source(name).(interface{ Addr() net.Addr })
		if !ok {
			t.Fatalf("source %s has no Addr method", name)
		}
		var addr net.Addr
		testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
			select {
			case err := <-ran:
				ran <- err
				return fmt.Errorf("instance stopped: %v", err)
			default:
			}
			if addr = src.Addr(); addr == nil {
				return fmt.Errorf("%s is not listening yet", name)
			}
			return nil
		})
		urls = append(urls, "ws://"+addr.String()+"/ws")
	}
	return urls, stop
}
