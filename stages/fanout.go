package stages

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/telemetry"
	"github.com/slipstream-sync/slipstream/pipeline"
)

func init() {
	pipeline.Register(pipeline.Kind{
		Class: pipeline.ClassStage,
		Name:  "fanout",
		Summary: "Hands each batch of stored messages to every sink of the pipeline: the websocket sink wakes the writers " +
			"of the chosen links (which send from memory, or from their outbox on disk when behind), other sinks apply " +
			"the messages. Requests and replies, which are never stored, are sent straight to their recipients' live " +
			"connections (dropped when a recipient is down: requesters time out). Must come after persist.",
		Example:   "stage \"fanout\" {}\n",
		NewConfig: func() any { return &noConfig{} },
		Build: func(_ any, bc *pipeline.BuildContext) (any, error) {
			f := &Fanout{sinks: bc.Sinks, links: bc.Links, self: bc.Instance.ID}
			var err error
			f.sends, err = telemetry.RegisterShared(bc.Metrics, prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "slipstream_unstored_sends_total",
				Help: "Requests and replies (never stored) sent by fanout to a link's live connection, by kind (request, reply) and outcome (sent, dropped: the link is down or its control queue is full).",
			}, []string{"kind", "outcome"}))
			return f, err
		},
	})
}

// Fanout is the fanout stage.
type Fanout struct {
	sinks []pipeline.Sink
	links *link.Registry
	self  string
	sends *prometheus.CounterVec
}

var _ pipeline.Stage = (*Fanout)(nil)

// Process implements pipeline.Stage. A sink's error fails the batch; the
// messages are already stored and acknowledged, and their deliveries wait in
// the outboxes, so nothing is lost.
func (f *Fanout) Process(ctx context.Context, batch []*pipeline.Envelope) ([]*pipeline.Envelope, error) {
	for _, e := range batch {
		if len(e.Recipients) > 0 && (isRequest(e) || isReply(e)) {
			f.sendUnstored(e)
		}
	}
	for _, s := range f.sinks {
		if err := s.Deliver(ctx, batch); err != nil {
			return nil, err
		}
	}
	return batch, nil
}

// sendUnstored queues request or reply e on each recipient's connection.
func (f *Fanout) sendUnstored(e *pipeline.Envelope) {
	kind := "request"
	if e.Msg.IsReply() {
		kind = "reply"
	}
	frame := forwardFrame(e, f.self)
	for _, id := range e.Recipients {
		outcome := "sent"
		if l := f.links.Get(id); l == nil || !l.SendControl(frame) {
			outcome = "dropped"
		}
		f.sends.WithLabelValues(kind, outcome).Inc()
	}
}
