// Package daemon assembles and runs one Slipstream instance from a loaded
// config: it opens the store, builds every source, sink and stage through the
// kind registry, runs the pipelines and the admin listener, and shuts it all
// down in order (sources stop reading, stages drain, sinks and links close,
// Badger closes last).
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/trace"

	"github.com/slipstream-sync/slipstream/internal/admin"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/telemetry"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// Options adjust how an instance is assembled.
type Options struct {
	// LogOutput receives the logs (default os.Stderr).
	LogOutput io.Writer
	// Logger replaces the logger built from the config.
	Logger *slog.Logger
	// AdminListen overrides admin.listen ("" keeps the config's; "-" disables).
	AdminListen string
	// StoreGCInterval is how often the store's value log is
	// garbage-collected (0: store.DefaultGCInterval, 5 minutes).
	StoreGCInterval time.Duration
}

// Instance is one running Slipstream instance.
type Instance struct {
	cfg     *pipeline.Config
	opts    Options
	log     *slog.Logger
	level   *slog.LevelVar
	store   *store.Store
	links   *link.Registry
	metrics *prometheus.Registry
	tracer  trace.Tracer
	flush   func(context.Context) error
	admin   *admin.Server
	dlq     *admin.DLQ

	commands *pipeline.Commands
	created  time.Time

	sources map[string]pipeline.Source
	sinks   map[string]pipeline.Sink
	parts   []any // every built part, in build order (sinks, sources, stages)
	runners []*pipeline.Runner

	startOnce   sync.Once
	startCtx    context.Context
	cancelStart context.CancelFunc
	stopOnce    sync.Once
}

// New opens the store and builds every part of cfg. On error everything
// opened so far is closed again.
func New(cfg *pipeline.Config, o Options) (in *Instance, err error) {
	in = &Instance{cfg: cfg, opts: o, sources: map[string]pipeline.Source{}, sinks: map[string]pipeline.Sink{},
		commands: pipeline.NewCommands(), created: time.Now()}
	if o.LogOutput == nil {
		o.LogOutput = os.Stderr
	}
	in.log, in.level, err = telemetry.NewLogger(o.LogOutput, cfg.Log.Format, cfg.Log.Level)
	if err != nil {
		return nil, err
	}
	if o.Logger != nil {
		in.log = o.Logger
	}
	in.log = in.log.With("instance", cfg.Instance.ID)
	built := in // `return nil, err` clears in before this runs
	defer func() {
		if err != nil {
			built.closeAll(context.Background())
		}
	}()

	in.metrics = prometheus.NewRegistry()
	in.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	in.tracer, in.flush, err = telemetry.NewTracer(context.Background(), telemetry.Tracing{
		Exporter: cfg.Tracing.Exporter, Endpoint: cfg.Tracing.Endpoint, SampleRatio: cfg.Tracing.SampleRatio,
		ServiceName: cfg.Tracing.ServiceName, InstanceID: cfg.Instance.ID,
	})
	if err != nil {
		return nil, err
	}

	dir := cfg.Instance.DataDir
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create data_dir: %w", err)
	}
	in.store, err = store.Open(filepath.Clean(dir), store.Options{MemTableSize: cfg.Instance.MemtableSize, Logger: in.log.With("part", "store")})
	if err != nil {
		return nil, err
	}
	if err := in.store.RegisterMetrics(in.metrics); err != nil {
		return nil, err
	}
	in.links, err = link.NewRegistry(in.store, cfg.Instance.ID, in.log.With("part", "links"))
	if err != nil {
		return nil, err
	}
	in.metrics.MustRegister(newLinkGauges(in.links))
	in.dlq = admin.NewDLQ(in.store, in.links, in.log.With("part", "dlq"))
	in.registerCommands(in.dlq)
	if err := in.build(); err != nil {
		return nil, err
	}

	listen := cfg.Admin.Listen
	if o.AdminListen != "" {
		listen = o.AdminListen
	}
	if listen != "-" && listen != "" {
		alog := in.log.With("part", "admin")
		in.admin = admin.New(in.metrics, in.readyChecks(), alog)
		in.admin.RequireToken(cfg.Admin.Token)
		in.dlq.Register(in.admin)
		in.registerState(in.admin)
		in.registerStatus(in.admin)
		in.registerTap(in.admin)
		in.registerLinks(in.admin)
		in.admin.ServeLogLevel(in.level)
		if err := in.admin.Listen(listen); err != nil {
			return nil, fmt.Errorf("admin listener on %s: %w", listen, err)
		}
	}
	return in, nil
}

func (in *Instance) buildContext(name string) *pipeline.BuildContext {
	return &pipeline.BuildContext{
		Instance: in.cfg.Instance,
		Name:     name,
		Store:    in.store,
		Links:    in.links,
		Logger:   in.log.With("part", name),
		Metrics:  in.metrics,
		Tracer:   in.tracer,
		Commands: in.commands,
	}
}

func buildPart(c *pipeline.Component, bc *pipeline.BuildContext) (any, error) {
	k, ok := pipeline.Lookup(c.Class, c.Kind)
	if !ok {
		return nil, fmt.Errorf("%s kind %q is not registered", c.Class, c.Kind)
	}
	p, err := k.Build(c.Config, bc)
	if err != nil {
		return nil, fmt.Errorf("build %s %q %q: %w", c.Class, c.Kind, c.Name, err)
	}
	return p, nil
}

// build makes sinks first (the websocket sink installs the link writers),
// then sources, then each pipeline's stages in order.
func (in *Instance) build() error {
	for _, c := range in.cfg.Sinks {
		p, err := buildPart(c, in.buildContext(c.Kind+"."+c.Name))
		if err != nil {
			return err
		}
		s, ok := p.(pipeline.Sink)
		if !ok {
			return fmt.Errorf("sink kind %q built a %T, not a Sink", c.Kind, p)
		}
		in.sinks[c.Kind+"."+c.Name] = s
		in.parts = append(in.parts, p)
	}
	for _, c := range in.cfg.Sources {
		p, err := buildPart(c, in.buildContext(c.Kind+"."+c.Name))
		if err != nil {
			return err
		}
		s, ok := p.(pipeline.Source)
		if !ok {
			return fmt.Errorf("source kind %q built a %T, not a Source", c.Kind, p)
		}
		in.sources[c.Kind+"."+c.Name] = s
		in.parts = append(in.parts, p)
	}
	rm := pipeline.NewMetrics(in.metrics)
	for _, pc := range in.cfg.Pipelines {
		r := &pipeline.Runner{Name: pc.Name, Logger: in.log.With("pipeline", pc.Name), Tracer: in.tracer, Metrics: rm,
			LogMessages: in.cfg.Log.Messages}
		var sinks []pipeline.Sink
		for _, ref := range pc.Sinks {
			sinks = append(sinks, in.sinks[ref])
		}
		for _, ref := range pc.Sources {
			r.Sources = append(r.Sources, pipeline.NamedSource{Ref: ref, Source: in.sources[ref]})
		}
		kinds := make([]string, len(pc.Stages))
		for i, st := range pc.Stages {
			kinds[i] = st.Kind
		}
		configs := map[string]any{}
		for _, st := range pc.Stages {
			configs[st.Kind] = st.Config
		}
		for _, st := range pc.Stages {
			bc := in.buildContext(st.Kind)
			bc.Pipeline, bc.Sinks, bc.StageKinds, bc.StageConfigs = pc.Name, sinks, kinds, configs
			bc.Logger = in.log.With("pipeline", pc.Name, "stage", st.Kind)
			p, err := buildPart(st, bc)
			if err != nil {
				return err
			}
			s, ok := p.(pipeline.Stage)
			if !ok {
				return fmt.Errorf("stage kind %q built a %T, not a Stage", st.Kind, p)
			}
			r.Stages = append(r.Stages, pipeline.NamedStage{Kind: st.Kind, Stage: s})
			in.parts = append(in.parts, p)
		}
		in.runners = append(in.runners, r)
	}
	return nil
}

// Start starts every part that has background work or listeners (so that
// their addresses are known when it returns), and the store's maintenance
// (value-log GC). Run calls it when it was not called before. On error
// everything is closed.
func (in *Instance) Start(ctx context.Context) error {
	var err error
	in.startOnce.Do(func() {
		in.startCtx, in.cancelStart = context.WithCancel(context.WithoutCancel(ctx))
		in.store.StartMaintenance(in.startCtx, store.MaintenanceOptions{GCInterval: in.opts.StoreGCInterval})
		for _, p := range in.parts {
			if s, ok := p.(pipeline.Starter); ok {
				if err = s.Start(in.startCtx); err != nil {
					in.closeAll(ctx)
					return
				}
			}
		}
	})
	return err
}

// Run starts the instance if needed and runs the pipelines until ctx is
// cancelled, then drains them; cancelling hard stops at once. It closes
// everything before it returns, Badger last.
func (in *Instance) Run(ctx, hard context.Context) error {
	if err := in.Start(hard); err != nil {
		return err
	}
	in.log.Info("instance running", "tags", in.cfg.Instance.Tags, "data_dir", in.cfg.Instance.DataDir)
	var wg sync.WaitGroup
	errs := make([]error, len(in.runners))
	for i, r := range in.runners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = r.Run(ctx, hard)
		}()
	}
	wg.Wait()
	in.log.Info("pipelines drained; closing")
	in.closeAll(hard)
	return errors.Join(errs...)
}

// closeAll closes parts (sources, stages, sinks), links, the admin listener,
// the tracer and finally the store. It is idempotent.
func (in *Instance) closeAll(ctx context.Context) {
	in.stopOnce.Do(func() {
		if in.cancelStart != nil {
			defer in.cancelStart()
		}
		for i := len(in.parts) - 1; i >= 0; i-- {
			if c, ok := in.parts[i].(pipeline.Closer); ok {
				if err := c.Close(); err != nil {
					in.log.Warn("close", "part", fmt.Sprintf("%T", in.parts[i]), "err", err)
				}
			}
		}
		if in.links != nil {
			in.links.Close()
		}
		if in.admin != nil {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_ = in.admin.Shutdown(sctx)
			cancel()
		}
		if in.flush != nil {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			if err := in.flush(sctx); err != nil {
				in.log.Warn("flushing traces", "err", err)
			}
			cancel()
		}
		if in.store != nil {
			if err := in.store.Close(); err != nil {
				in.log.Error("closing the store", "err", err)
			}
		}
	})
}

// Source returns a built source by reference ("websocket_server.ingress").
func (in *Instance) Source(ref string) pipeline.Source { return in.sources[ref] }

// Links is the instance's link registry.
func (in *Instance) Links() *link.Registry { return in.links }

// Store is the instance's store.
func (in *Instance) Store() *store.Store { return in.store }

// AdminAddr is the admin listener's address ("" when disabled).
func (in *Instance) AdminAddr() string {
	if in.admin == nil || in.admin.Addr() == nil {
		return ""
	}
	return in.admin.Addr().String()
}

// Metrics is the instance's Prometheus registry.
func (in *Instance) Metrics() *prometheus.Registry { return in.metrics }

// SetLogLevel changes the log level at run time.
func (in *Instance) SetLogLevel(l slog.Level) { in.level.Set(l) }
