package stages

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/telemetry"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// DecodeConfig holds the protocol limits (PROTOCOL.md "Transport").
type DecodeConfig struct {
	MaxFrame     int `hcl:"max_frame,optional" doc:"largest frame accepted, in bytes"`
	MaxPath      int `hcl:"max_path,optional" doc:"most hops in messagePath"`
	MaxMessageID int `hcl:"max_message_id,optional" doc:"longest messageId, in bytes"`
	MaxKey       int `hcl:"max_key,optional" doc:"longest key, in bytes"`
	MaxTags      int `hcl:"max_tags,optional" doc:"most tags in targetedTags"`
	MaxTagLen    int `hcl:"max_tag_len,optional" doc:"longest tag, in bytes"`
}

// Validate implements pipeline.Validator.
func (c *DecodeConfig) Validate() error {
	for _, f := range []struct {
		name string
		v    int
	}{{"max_frame", c.MaxFrame}, {"max_path", c.MaxPath}, {"max_message_id", c.MaxMessageID},
		{"max_key", c.MaxKey}, {"max_tags", c.MaxTags}, {"max_tag_len", c.MaxTagLen}} {
		if f.v <= 0 {
			return &pipeline.FieldError{Field: f.name, Err: errors.New("must be greater than 0")}
		}
	}
	return nil
}

func (c *DecodeConfig) limits() *slipstream.Limits {
	return &slipstream.Limits{MaxFrame: c.MaxFrame, MaxPath: c.MaxPath, MaxMessageID: c.MaxMessageID,
		MaxKey: c.MaxKey, MaxTags: c.MaxTags, MaxTagLen: c.MaxTagLen}
}

func init() {
	pipeline.Register(pipeline.Kind{
		Class:   pipeline.ClassStage,
		Name:    "decode",
		Summary: "Parses and validates each frame (answering ERR on failure), fills messageId, originInstanceId, clusterGroupId and timestamp when absent, and picks up the trace context from traceparent. Must be the first stage.",
		Example: "stage \"decode\" {\n  max_frame = 1048576\n}\n",
		NewConfig: func() any {
			l := slipstream.DefaultLimits()
			return &DecodeConfig{MaxFrame: l.MaxFrame, MaxPath: l.MaxPath, MaxMessageID: l.MaxMessageID,
				MaxKey: l.MaxKey, MaxTags: l.MaxTags, MaxTagLen: l.MaxTagLen}
		},
		Build: func(cfg any, bc *pipeline.BuildContext) (any, error) {
			forbidden, err := telemetry.RegisterShared(bc.Metrics, prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "slipstream_forbidden_total",
				Help: "Messages refused with ERR forbidden because the link's permissions (or allow_commands) do not allow them, by message type. Nothing of them was stored or forwarded.",
			}, []string{"type"}))
			if err != nil {
				return nil, err
			}
			return &Decode{
				forbidden: forbidden,
				lim:       cfg.(*DecodeConfig).limits(),
				self:      bc.Instance.ID,
				cluster:   bc.Instance.ClusterGroup,
				requests:  bc.HasStage("state"),
				replies:   bc.HasStage("tag_filter") && bc.HasStage("fanout"),
				now:       time.Now,
			}, nil
		},
	})
}

// Decode is the decode stage.
type Decode struct {
	lim      *slipstream.Limits
	self     string
	cluster  string
	requests bool // the pipeline can answer GK/GA/GW
	replies  bool // the pipeline routes replies back (tag_filter + fanout)
	now      func() time.Time

	forbidden *prometheus.CounterVec
}

var _ pipeline.Stage = (*Decode)(nil)

var traceContext = propagation.TraceContext{}

// Process implements pipeline.Stage.
func (d *Decode) Process(_ context.Context, batch []*pipeline.Envelope) ([]*pipeline.Envelope, error) {
	for _, e := range batch {
		if e.Status != pipeline.Accepted || e.Msg != nil {
			continue
		}
		m, err := slipstream.Decode(e.Raw, d.lim)
		if err == nil {
			err = m.Validate(d.lim)
		}
		if err != nil {
			reject(e, err)
			continue
		}
		e.Msg = m
		switch {
		case m.Type == slipstream.TypeHELLO:
			reject(e, &slipstream.Error{Code: slipstream.CodeProtocol, MessageID: m.MessageID,
				Text: "HELLO is only accepted as the first frame of a connection"})
			continue
		case m.Type == slipstream.TypeACK || m.Type == slipstream.TypeERR:
			continue // consumed by the ack stage
		case m.IsReply():
			if !d.replies {
				reject(e, &slipstream.Error{Code: slipstream.CodeUnsupported, MessageID: m.MessageID,
					Text: "replies (inReplyTo) are not routed by this pipeline"})
				continue
			}
		case m.Type.IsRequest() && !d.requests:
			reject(e, &slipstream.Error{Code: slipstream.CodeUnsupported, MessageID: m.MessageID,
				Text: string(m.Type) + " requests need a pipeline with a state stage"})
			continue
		case IsInstanceCommand(m) && e.From != nil && !e.From.AllowCommands():
			d.forbid(e, "link "+quote(e.From.ID())+" may not issue "+quote(m.Command)+
				" (slipstream.* commands need allow_commands on its listener or peer block)")
			continue
		case e.From != nil:
			if err := e.From.Permissions().Check(m); err != nil {
				d.forbid(e, "link "+quote(e.From.ID())+" "+err.Error())
				continue
			}
		}
		d.fill(e)
		if m.TraceParent != "" {
			carrier := propagation.MapCarrier{"traceparent": m.TraceParent}
			if m.TraceState != "" {
				carrier["tracestate"] = m.TraceState
			}
			e.Ctx = traceContext.Extract(e.Context(), carrier)
		}
	}
	return batch, nil
}

// forbid refuses e with ERR forbidden and counts it.
func (d *Decode) forbid(e *pipeline.Envelope, text string) {
	d.forbidden.WithLabelValues(string(e.Msg.Type)).Inc()
	reject(e, &slipstream.Error{Code: slipstream.CodeForbidden, MessageID: e.Msg.MessageID, Text: text})
}

// fill sets the fields an entering message may lack (routing step 4).
func (d *Decode) fill(e *pipeline.Envelope) {
	m := e.Msg
	if m.MessageID == "" {
		m.MessageID = slipstream.NewMessageID()
	}
	if m.OriginInstanceID == "" {
		if e.From != nil && !e.From.IsPeer() {
			m.OriginInstanceID = e.From.ID()
		} else {
			m.OriginInstanceID = d.self
		}
	}
	if m.ClusterGroupID == "" {
		m.ClusterGroupID = d.cluster
	}
	if m.Timestamp == 0 {
		m.Timestamp = d.now().UnixMilli()
	}
}

// reject answers e's sender with ERR and marks e Rejected: nothing of it is
// stored or forwarded.
func reject(e *pipeline.Envelope, err error) {
	e.Status = pipeline.Rejected
	if e.From == nil {
		return
	}
	var pe *slipstream.Error
	if !errors.As(err, &pe) {
		pe = &slipstream.Error{Code: slipstream.CodeInvalid, Text: err.Error()}
	}
	if pe.MessageID == "" && e.Msg != nil {
		pe.MessageID = e.Msg.MessageID
	}
	e.From.Reply(pe.Frame())
}
