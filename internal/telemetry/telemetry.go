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

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// ParseLevel reads debug|info|warn|error.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToLower(s))); err != nil {
		return 0, fmt.Errorf("unknown log level %q; use debug, info, warn or error", s)
	}
	return l, nil
}

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
