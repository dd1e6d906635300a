package stages

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/telemetry"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// TagFilterConfig configures tag_filter.
type TagFilterConfig struct {
	RequestTimeout time.Duration `hcl:"request_timeout,optional" doc:"how long the link a request (GK/GA/GW) or command came in on is remembered, so that replies travel back over it; later replies are dropped"`
	MaxRequests    int           `hcl:"max_requests,optional" doc:"most requests remembered at once; a request beyond it is refused with ERR overloaded"`
	MaxPerLink     int           `hcl:"max_requests_per_link,optional" doc:"most requests one link may have awaiting replies; a request beyond it is refused with ERR rate_limited"`
}

// Validate implements pipeline.Validator.
func (c *TagFilterConfig) Validate() error {
	switch {
	case c.RequestTimeout < 100*time.Millisecond:
		return &pipeline.FieldError{Field: "request_timeout", Err: errors.New("must be at least 100ms")}
	case c.MaxRequests <= 0:
		return &pipeline.FieldError{Field: "max_requests", Err: errors.New("must be greater than 0")}
	case c.MaxPerLink <= 0:
		return &pipeline.FieldError{Field: "max_requests_per_link", Err: errors.New("must be greater than 0")}
	}
	return nil
}

func init() {
	pipeline.Register(pipeline.Kind{
		Class: pipeline.ClassStage,
		Name:  "tag_filter",
		Summary: "Chooses each message's recipients (routing step 5). Data: every known link except the one it came from, " +
			"its origin and any instance already in its messagePath, and, when targetedTags is non-empty, only links " +
			"carrying at least one of those tags; offline durable links are chosen too (their deliveries wait in their " +
			"outboxes). Requests (GK/GA/GW) and slipstream.* commands: the same rule over peer links only. Replies " +
			"(inReplyTo): the link the request came in on, remembered for request_timeout; a copy of a request that " +
			"arrives again by another path is dropped.",
		Example: "stage \"tag_filter\" {\n  request_timeout = \"30s\"\n}\n",
		NewConfig: func() any {
			return &TagFilterConfig{RequestTimeout: link.DefaultRequestTTL, MaxRequests: link.DefaultMaxRequests,
				MaxPerLink: link.DefaultMaxRequestsPerLink}
		},
		Build: func(cfg any, bc *pipeline.BuildContext) (any, error) {
			c := cfg.(*TagFilterConfig)
			reqs := bc.Links.Requests()
			reqs.Configure(c.RequestTimeout, c.MaxRequests, c.MaxPerLink)
			t := &TagFilter{links: bc.Links, reqs: reqs}
			var err error
			t.replies, err = telemetry.RegisterShared(bc.Metrics, prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "slipstream_replies_total",
				Help: "Replies (inReplyTo) handled by tag_filter, by outcome: routed back to the link the request came in on, or unroutable (request unknown or expired).",
			}, []string{"outcome"}))
			if err != nil {
				return nil, err
			}
			t.requests, err = telemetry.RegisterShared(bc.Metrics, prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "slipstream_requests_total",
				Help: "Requests (GK/GA/GW) seen by tag_filter, by type and outcome: accepted, duplicate (a copy that came another way), refused (id in use, or too many awaiting replies).",
			}, []string{"type", "outcome"}))
			if err != nil {
				return nil, err
			}
			_, err = telemetry.RegisterShared(bc.Metrics, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "slipstream_requests_pending",
				Help: "Requests and commands whose reply route is remembered (see tag_filter request_timeout).",
			}, func() float64 { return float64(reqs.Len()) }))
			return t, err
		},
	})
}

// TagFilter is the tag_filter stage.
type TagFilter struct {
	links    *link.Registry
	reqs     *link.Requests
	scratch  []*link.Link
	replies  *prometheus.CounterVec
	requests *prometheus.CounterVec
}

var _ pipeline.Stage = (*TagFilter)(nil)

// Process implements pipeline.Stage.
func (t *TagFilter) Process(_ context.Context, batch []*pipeline.Envelope) ([]*pipeline.Envelope, error) {
	out := batch[:0]
	for _, e := range batch {
		from := ""
		if e.From != nil {
			from = e.From.ID()
		}
		switch {
		case isReply(e):
			to, ok := t.reqs.Lookup(e.Msg.InReplyTo)
			if !ok || to == from {
				t.replies.WithLabelValues("unroutable").Inc()
				continue // dropped: nobody here waits for it
			}
			t.replies.WithLabelValues("routed").Inc()
			e.Recipients = []string{to}
		case isRequest(e):
			if !t.request(e, from) {
				continue
			}
			if e.Status == pipeline.Accepted {
				t.choose(e, from, true)
			}
		case isData(e):
			m := e.Msg
			if m.Type == slipstream.TypeCMD {
				// Replies to a command travel back the way it came. An error
				// (the id is known: a copy after the dedup window; the table
				// is full) only means its replies cannot be routed here.
				_ = t.reqs.Remember(m.MessageID, from)
			}
			t.choose(e, from, IsInstanceCommand(m))
		}
		out = append(out, e)
	}
	return out, nil
}

// request remembers where request e came from; false when e is dropped (a
// copy that came another way round the mesh) or refused.
func (t *TagFilter) request(e *pipeline.Envelope, from string) bool {
	m := e.Msg
	err := t.reqs.Remember(m.MessageID, from)
	switch {
	case err == nil:
		t.requests.WithLabelValues(string(m.Type), "accepted").Inc()
		return true
	case errors.Is(err, link.ErrKnownRequest) && e.From != nil && e.From.IsPeer():
		t.requests.WithLabelValues(string(m.Type), "duplicate").Inc()
		return false
	case errors.Is(err, link.ErrKnownRequest):
		t.requests.WithLabelValues(string(m.Type), "refused").Inc()
		reject(e, &slipstream.Error{Code: slipstream.CodeInvalid, MessageID: m.MessageID,
			Text: "messageId " + quote(m.MessageID) + " is already used by a request awaiting replies; use a new id per request"})
	case errors.Is(err, link.ErrTooManyLinkRequests):
		t.requests.WithLabelValues(string(m.Type), "refused").Inc()
		reject(e, &slipstream.Error{Code: slipstream.CodeRateLimited, MessageID: m.MessageID,
			Text: err.Error() + "; wait for replies (or their timeout) before asking more"})
	default:
		t.requests.WithLabelValues(string(m.Type), "refused").Inc()
		reject(e, &slipstream.Error{Code: slipstream.CodeOverloaded, MessageID: m.MessageID, Text: err.Error() + "; retry later"})
	}
	return true // Rejected: passed on, answered already
}

// choose sets e.Recipients; peersOnly restricts them to other instances.
func (t *TagFilter) choose(e *pipeline.Envelope, from string, peersOnly bool) {
	if peersOnly {
		t.scratch = t.links.PeerRecipients(t.scratch, from, e.Msg)
	} else {
		t.scratch = t.links.Recipients(t.scratch, from, e.Msg)
	}
	ids := make([]string, len(t.scratch))
	for i, l := range t.scratch {
		ids[i] = l.ID()
	}
	e.Recipients = ids
}
