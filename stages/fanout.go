package stages

import (
	"context"

	"github.com/slipstream-sync/slipstream/pipeline"
)

func init() {
	pipeline.Register(pipeline.Kind{
		Class: pipeline.ClassStage,
		Name:  "fanout",
		Summary: "Hands each batch of stored messages to every sink of the pipeline: the websocket sink wakes the writers " +
			"of the chosen links (which send from memory, or from their outbox on disk when behind), other sinks apply " +
			"the messages. Must come after persist.",
		Example:   "stage \"fanout\" {}\n",
		NewConfig: func() any { return &noConfig{} },
		Build: func(_ any, bc *pipeline.BuildContext) (any, error) {
			return &Fanout{sinks: bc.Sinks}, nil
		},
	})
}

// Fanout is the fanout stage.
type Fanout struct {
	sinks []pipeline.Sink
}

var _ pipeline.Stage = (*Fanout)(nil)

// Process implements pipeline.Stage. A sink's error fails the batch; the
// messages are already stored and acknowledged, and their deliveries wait in
// the outboxes, so nothing is lost.
func (f *Fanout) Process(ctx context.Context, batch []*pipeline.Envelope) ([]*pipeline.Envelope, error) {
	for _, s := range f.sinks {
		if err := s.Deliver(ctx, batch); err != nil {
			return nil, err
		}
	}
	return batch, nil
}
