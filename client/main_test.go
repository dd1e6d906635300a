package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/slipstream-sync/slipstream/internal/daemon"
	"github.com/slipstream-sync/slipstream/internal/testredis"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// exampleURL is the WebSocket URL of the instance the examples talk to: in
// an application, the local instance's (ws://127.0.0.1:7070/ws with the
// embedded default config).
var exampleURL string

// TestMain runs one instance for the examples, then the tests, then checks
// that no goroutine outlived them.
func TestMain(m *testing.M) {
	stop, err := startExampleInstance()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the examples' instance:", err)
		os.Exit(1)
	}
	code := m.Run()
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping the examples' instance:", err)
		code = 1
	}
	if code == 0 {
		if err := goleak.Find(testredis.IgnoreLeaks()); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// startExampleInstance starts an instance (the tests' config, data in a
// temp dir) and sets exampleURL.
func startExampleInstance() (stop func() error, err error) {
	dir, err := os.MkdirTemp("", "slipstream-client-examples-")
	if err != nil {
		return nil, err
	}
	cfg, diags := pipeline.Load("examples.hcl", []byte(configText("example-instance", "examples", []string{"examples"}, "", dir)))
	if diags.HasErrors() {
		return nil, errors.New(pipeline.FormatDiagnostics(diags))
	}
	in, err := daemon.New(cfg, daemon.Options{LogOutput: io.Discard})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- in.Run(ctx, context.Background()) }()
	stop = func() error {
		cancel()
		err := <-ran
		return errors.Join(err, os.RemoveAll(dir))
	}
	src, _ := in.Source("websocket_server.ingress").(interface{ Addr() net.Addr })
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if addr := src.Addr(); addr != nil {
			exampleURL = "ws://" + addr.String() + "/ws"
			return stop, nil
		}
	}
	return nil, errors.Join(errors.New("the instance did not listen within 10s"), stop())
}
