package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/daemon"
	"github.com/slipstream-sync/slipstream/pipeline"
	"github.com/slipstream-sync/slipstream/sources"
)

// localInstance is the instance the bench runs in-process when no -url is
// given: the embedded default pipeline, listening on a free 127.0.0.1 port,
// with its data in a temp dir that is removed afterwards.
type localInstance struct {
	url  string
	in   *daemon.Instance
	stop func() error
}

// startLocal starts the instance; its warnings and errors go to logs.
func startLocal(logs io.Writer) (*localInstance, error) {
	cfg, diags := pipeline.Load("pipelines.hcl (embedded default)", slipstream.DefaultConfig)
	if diags.HasErrors() {
		return nil, fmt.Errorf("embedded config:\n%s", pipeline.FormatDiagnostics(diags))
	}
	dir, err := os.MkdirTemp("", "slipstream-bench-")
	if err != nil {
		return nil, err
	}
	cfg.Instance.DataDir = dir
	var ingress string
	for _, c := range cfg.Sources {
		if sc, ok := c.Config.(*sources.ServerConfig); ok {
			sc.Listen = "127.0.0.1:0"
			ingress = c.Ref()
		}
	}
	if ingress == "" {
		os.RemoveAll(dir)
		return nil, errors.New("the embedded config has no websocket_server source")
	}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	in, err := daemon.New(cfg, daemon.Options{Logger: log, AdminListen: "-"})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	hard, hardCancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- in.Run(ctx, hard) }()
	stop := func() error {
		cancel()
		var err error
		select {
		case err = <-ran:
		case <-time.After(30 * time.Second):
			hardCancel()
			err = errors.Join(errors.New("the instance took over 30s to drain"), <-ran)
		}
		hardCancel()
		return errors.Join(err, os.RemoveAll(dir))
	}

	src, _ := in.Source(ingress).(interface{ Addr() net.Addr })
	if src == nil {
		return nil, errors.Join(fmt.Errorf("source %s has no address", ingress), stop())
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		select {
		case err := <-ran:
			ran <- err
			return nil, errors.Join(fmt.Errorf("the instance stopped: %v", err), stop())
		default:
		}
		if a := src.Addr(); a != nil {
			return &localInstance{url: "ws://" + a.String() + "/ws", in: in, stop: stop}, nil
		}
		if time.Now().After(deadline) {
			return nil, errors.Join(errors.New("the instance is not listening after 10s"), stop())
		}
	}
}

// outboxLeft counts the deliveries still in the outboxes of links: after
// every delivery is acknowledged it must fall to 0 (completed messages are
// deleted).
func (l *localInstance) outboxLeft(links []string) (int, error) {
	total := 0
	for _, id := range links {
		n, err := l.in.Store().CountOutbox(id)
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}
