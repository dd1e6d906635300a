// Package jaeger pins the Jaeger all-in-one binary used by the tracing
// tests. It is a module of its own so that Jaeger's dependencies never
// enter the main module's build; build it with
//
//	cd tools/jaeger && go build -o bin/jaeger github.com/jaegertracing/jaeger/cmd/jaeger
package jaeger
