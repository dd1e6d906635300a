package stages

import (
	"context"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// InstanceCommandPrefix starts the names of the commands instances run
// themselves (PROTOCOL.md "Requests and replies"); other commands are
// application data delivered to clients.
const InstanceCommandPrefix = "slipstream."

// IsInstanceCommand reports whether m is a CMD (not a reply) for instances.
func IsInstanceCommand(m *slipstream.Message) bool {
	return m.Type == slipstream.TypeCMD && !m.IsReply() && strings.HasPrefix(m.Command, InstanceCommandPrefix)
}

// isRequest reports whether e is a live get (GK, GA, GW) request.
func isRequest(e *pipeline.Envelope) bool {
	return e.Status == pipeline.Accepted && e.Msg != nil && e.Msg.Type.IsRequest() && !e.Msg.IsReply()
}

// isReply reports whether e is a live reply (any type with inReplyTo).
func isReply(e *pipeline.Envelope) bool {
	return e.Status == pipeline.Accepted && e.Msg != nil && e.Msg.IsReply()
}

// forSelf reports whether this instance, with tags, is among the targets of
// m: every instance when targetedTags is empty, else those carrying one of
// them. It decides whether the instance applies state, answers gets and runs
// commands.
func forSelf(tags []string, m *slipstream.Message) bool {
	return slipstream.HasAnyTag(tags, m.TargetedTags)
}

// forwardFrame renders the message as this instance forwards it:
// sourceInstanceId is self, and the trace context is this instance's span
// when tracing is on (otherwise the incoming traceparent rides on unchanged).
func forwardFrame(e *pipeline.Envelope, self string) []byte {
	m := e.Msg
	m.SourceInstanceID = self
	injectTrace(e.Context(), m)
	return slipstream.Encode(m)
}

// injectTrace sets m's traceparent and tracestate to ctx's span when it has
// a valid one (tracing on), and leaves them alone otherwise.
func injectTrace(ctx context.Context, m *slipstream.Message) {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		carrier := propagation.MapCarrier{}
		traceContext.Inject(ctx, carrier)
		m.TraceParent = carrier.Get("traceparent")
		m.TraceState = carrier.Get("tracestate")
	}
}

func quote(s string) string { return strconv.Quote(s) }
