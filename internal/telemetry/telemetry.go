// Package telemetry sets up what every part of an instance is handed: the
// structured logger (log/slog, level changeable at run time) and the
// OpenTelemetry tracer provider (OTLP over HTTP or gRPC, or stdout; parent-based
// ratio sampling).
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

var levels = map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}

// ParseLevel reads debug|info|warn|error (any case): the config's
// log.level, PUT /v1/log-level and slipstream.set_log_level.
func ParseLevel(s string) (slog.Level, error) {
	l, ok := levels[strings.ToLower(strings.TrimSpace(s))]
	if !ok {
		return 0, fmt.Errorf("unknown log level %q; use debug, info, warn or error", s)
	}
	return l, nil
}

// LevelName is ParseLevel's inverse: "debug", "info", "warn" or "error".
func LevelName(l slog.Level) string { return strings.ToLower(l.String()) }

// NewLogger builds the instance logger writing to w in format "json" or
// "text"; the returned LevelVar changes its level at run time.
func NewLogger(w io.Writer, format, level string) (*slog.Logger, *slog.LevelVar, error) {
	lv := new(slog.LevelVar)
	l, err := ParseLevel(level)
	if err != nil {
		return nil, nil, err
	}
	lv.Set(l)
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler
	switch format {
	case "", "json":
		h = slog.NewJSONHandler(w, opts)
	case "text":
		h = slog.NewTextHandler(w, opts)
	default:
		return nil, nil, fmt.Errorf("unknown log format %q; use json or text", format)
	}
	return slog.New(h), lv, nil
}

// Tracing is the tracing configuration an instance starts with.
type Tracing struct {
	Exporter    string // none | otlp_http | otlp_grpc | stdout
	Endpoint    string // host:port of the OTLP receiver
	SampleRatio float64
	ServiceName string
	InstanceID  string
	Stdout      io.Writer // for the stdout exporter (default: discard)
}

// NewTracer returns the tracer stages use and a shutdown function that
// flushes pending spans. With exporter "none" the tracer is nil: the runner
// then records no spans at all (no cost).
func NewTracer(ctx context.Context, c Tracing) (trace.Tracer, func(context.Context) error, error) {
	noop := func(context.Context) error { return nil }
	var exp sdktrace.SpanExporter
	var err error
	switch c.Exporter {
	case "", "none":
		return nil, noop, nil
	case "otlp_http":
		exp, err = otlptracehttp.New(ctx, otlptracehttp.WithEndpoint(c.Endpoint), otlptracehttp.WithInsecure())
	case "otlp_grpc":
		exp, err = otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(c.Endpoint), otlptracegrpc.WithInsecure())
	case "stdout":
		w := c.Stdout
		if w == nil {
			w = io.Discard
		}
		exp, err = stdouttrace.New(stdouttrace.WithWriter(w))
	default:
		return nil, noop, fmt.Errorf("unknown tracing exporter %q; use none, otlp_http, otlp_grpc or stdout", c.Exporter)
	}
	if err != nil {
		return nil, noop, fmt.Errorf("tracing exporter %s: %w", c.Exporter, err)
	}
	name := c.ServiceName
	if name == "" {
		name = "slipstream-" + c.InstanceID
	}
	res := resource.NewSchemaless(
		attribute.String("service.name", name),
		attribute.String("service.instance.id", c.InstanceID),
	)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(c.SampleRatio))),
	)
	return tp.Tracer("github.com/slipstream-sync/slipstream"), tp.Shutdown, nil
}

// RegisterShared registers c on reg, or returns the collector already
// registered under the same description: two parts of one kind (two
// websocket sinks, two peer diallers) share the instance's instruments.
func RegisterShared[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if prev, ok := are.ExistingCollector.(C); ok {
			return prev, nil
		}
	}
	if err != nil {
		return c, fmt.Errorf("register metrics: %w", err)
	}
	return c, nil
}

// Metric conventions shared by the parts of an instance. Every metric is
// named slipstream_*, in base units (seconds, bytes), counters end in
// _total. Links are labelled by id, which configuration and named clients
// bound; clients that do not name themselves (ephemeral con-... links) share
// the one label value EphemeralLink, so short connections never add series.
// Nothing is labelled by messageId or key.

// EphemeralLink is the link label of every ephemeral (unnamed client) link.
const EphemeralLink = "ephemeral"

// LinkLabel is the value of a link label for the link id (durable: it has
// a stable id that outlives its connection).
func LinkLabel(id string, durable bool) string {
	if !durable {
		return EphemeralLink
	}
	return id
}

// Points of slipstream_message_age_seconds.
const (
	// AgeAccepted: the message was stored (or, for a duplicate or a loop,
	// recognised) by this instance.
	AgeAccepted = "accepted"
	// AgeDelivered: a recipient link acknowledged (or, for a link that
	// does not acknowledge, was sent) the message.
	AgeDelivered = "delivered"
)

// NewMessageAge returns the end-to-end latency histogram,
// slipstream_message_age_seconds{point}: the age of a data message, from its
// origin timestamp, when this instance accepted it and when a recipient
// acknowledged it. The pipeline runner and the websocket sink register the
// same definition with RegisterShared. Clocks of other instances count: a
// negative age (a clock ahead of ours) is observed as 0.
func NewMessageAge() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "slipstream_message_age_seconds",
		Help: "End-to-end latency: age of a data message from its origin timestamp, when this instance accepted it (point=accepted) and when a recipient link acknowledged it (point=delivered).",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600,
			6 * 3600, 24 * 3600},
	}, []string{"point"})
}

// ObserveAge observes the age of a message with origin timestamp ts (ms
// since the epoch) at now; a message without timestamp is not observed.
func ObserveAge(o prometheus.Observer, ts int64, now time.Time) {
	if ts <= 0 {
		return
	}
	o.Observe(max(now.Sub(time.UnixMilli(ts)).Seconds(), 0))
}
