package stages

import (
	"context"
	"log/slog"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/pipeline"
)

func init() {
	pipeline.Register(pipeline.Kind{
		Class: pipeline.ClassStage,
		Name:  "ack",
		Summary: "Acknowledges every data message to the link it came from once it is durably stored, and also duplicates " +
			"and loops (so the sender stops retrying). Consumes incoming ACK frames (the delivery is complete) and ERR " +
			"frames (the link refused a delivery). Envelopes that are finished stop here.",
		Example:   "stage \"ack\" {}\n",
		NewConfig: func() any { return &noConfig{} },
		Build: func(_ any, bc *pipeline.BuildContext) (any, error) {
			return &Ack{self: bc.Instance.ID, links: bc.Links, log: bc.Logger}, nil
		},
	})
}

// Ack is the ack stage.
type Ack struct {
	self  string
	links *link.Registry
	log   *slog.Logger
}

var _ pipeline.Stage = (*Ack)(nil)

// Process implements pipeline.Stage.
func (a *Ack) Process(_ context.Context, batch []*pipeline.Envelope) ([]*pipeline.Envelope, error) {
	out := batch[:0]
	for _, e := range batch {
		m := e.Msg
		switch {
		case m == nil || e.Status == pipeline.Rejected || e.Status == pipeline.Consumed || e.Status == pipeline.Failed:
			continue
		case m.Type == slipstream.TypeACK || m.Type == slipstream.TypeERR:
			a.feedback(e)
			e.Status = pipeline.Consumed
			continue
		case m.Type.IsData() && !m.IsReply():
			if e.From != nil {
				e.From.Reply(slipstream.NewAck(m, a.self))
			}
			if e.Status != pipeline.Accepted {
				continue
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// feedback hands an ACK or ERR from a link to that link's outbox writer.
func (a *Ack) feedback(e *pipeline.Envelope) {
	if e.From == nil {
		return
	}
	l := a.links.Get(e.From.ID())
	if l == nil {
		return
	}
	ob := l.Outbox()
	if ob == nil {
		return
	}
	m := e.Msg
	if m.Type == slipstream.TypeACK {
		ob.Acked(m.ClusterGroupID, m.MessageID)
		return
	}
	a.log.Warn("link refused a message", "link", l.ID(), "messageId", m.MessageID, "code", m.Code, "error", m.Error)
	ob.Refused(m.MessageID, m.Code, m.Error)
}
