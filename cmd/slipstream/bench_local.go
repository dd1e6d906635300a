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

// localInstance is an instance the bench runs in-process: the embedded
// default pipeline, listening on 127.0.0.1 (a free port unless the spec
// picks one), with its data in a temp dir that is removed afterwards.
type localInstance struct {
	id    string
	url   string
	peers []string // the ids of the peers it dials
	in    *daemon.Instance
	stop  func() error
}

// localSpec adjusts the embedded default pipeline for one in-process
// instance; the zero value leaves it alone (apart from the port and the
// data dir).
type localSpec struct {
	ID     string               // instance.id and cluster_group ("": the default's)
	Tags   []string             // instance.tags (nil: the default's)
	Listen string               // the websocket_server's address ("": 127.0.0.1:0)
	Peers  []sources.PeerConfig // dialled by the websocket_client source
	// Trace turns tracing on with sample ratio TraceSample, exported by the
	// stdout exporter into io.Discard: the cost of tracing without a
	// collector's network. Off: the default config's (no tracing).
	Trace       bool
	TraceSample float64
}

// Redials between the instances of a mesh: fast, and never giving up, so
// that the instances find each other as they start one after the other.
var meshRetry = sources.RetryConfig{Interval: 20 * time.Millisecond, MaxInterval: 200 * time.Millisecond,
	Attempts: 0, Cooldown: time.Second}

// startLocal starts the instance; its warnings and errors go to logs.
func startLocal(logs io.Writer, spec localSpec) (*localInstance, error) {
	cfg, diags := pipeline.Load("pipelines.hcl (embedded default)", slipstream.DefaultConfig)
	if diags.HasErrors() {
		return nil, fmt.Errorf("embedded config:\n%s", pipeline.FormatDiagnostics(diags))
	}
	if spec.ID != "" {
		cfg.Instance.ID, cfg.Instance.ClusterGroup = spec.ID, spec.ID
	}
	if spec.Tags != nil {
		cfg.Instance.Tags = spec.Tags
	}
	if spec.Listen == "" {
		spec.Listen = "127.0.0.1:0"
	}
	if spec.Trace {
		cfg.Tracing.Exporter, cfg.Tracing.SampleRatio = "stdout", spec.TraceSample
	}
	var ingress string
	var peers []string
	for _, c := range cfg.Sources {
		switch sc := c.Config.(type) {
		case *sources.ServerConfig:
			sc.Listen = spec.Listen
			ingress = c.Ref()
		case *sources.ClientConfig:
			if len(spec.Peers) == 0 {
				continue
			}
			sc.Peers, sc.Retry = spec.Peers, meshRetry
			if err := sc.Validate(); err != nil {
				return nil, fmt.Errorf("peers of %s: %w", cfg.Instance.ID, err)
			}
			for _, p := range spec.Peers {
				peers = append(peers, p.ID)
			}
		}
	}
	if ingress == "" {
		return nil, errors.New("the embedded config has no websocket_server source")
	}
	if len(spec.Peers) > 0 && peers == nil {
		return nil, errors.New("the embedded config has no websocket_client source")
	}
	dir, err := os.MkdirTemp("", "slipstream-bench-")
	if err != nil {
		return nil, err
	}
	cfg.Instance.DataDir = dir
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
			return &localInstance{id: cfg.Instance.ID, url: "ws://" + a.String() + "/ws", peers: peers, in: in, stop: stop}, nil
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
