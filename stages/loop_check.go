package stages

import (
	"context"
	"errors"
	"fmt"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// LoopCheckConfig configures loop_check.
type LoopCheckConfig struct {
	MaxHops int `hcl:"max_hops,optional" doc:"most instances a message may cross; one that would exceed it is refused with ERR invalid"`
}

// Validate implements pipeline.Validator.
func (c *LoopCheckConfig) Validate() error {
	if c.MaxHops <= 0 {
		return &pipeline.FieldError{Field: "max_hops", Err: errors.New("must be greater than 0")}
	}
	return nil
}

func init() {
	pipeline.Register(pipeline.Kind{
		Class:     pipeline.ClassStage,
		Name:      "loop_check",
		Summary:   "Drops a data message or request whose messagePath already holds this instance (a loop; data is still ACKed so the sender stops retrying), otherwise appends this instance's id to messagePath.",
		Example:   "stage \"loop_check\" {}\n",
		NewConfig: func() any { return &LoopCheckConfig{MaxHops: slipstream.DefaultLimits().MaxPath} },
		Build: func(cfg any, bc *pipeline.BuildContext) (any, error) {
			return &LoopCheck{self: bc.Instance.ID, maxHops: cfg.(*LoopCheckConfig).MaxHops}, nil
		},
	})
}

// LoopCheck is the loop_check stage.
type LoopCheck struct {
	self    string
	maxHops int
}

var _ pipeline.Stage = (*LoopCheck)(nil)

// Process implements pipeline.Stage.
func (l *LoopCheck) Process(_ context.Context, batch []*pipeline.Envelope) ([]*pipeline.Envelope, error) {
	for _, e := range batch {
		if !isData(e) && !isRequest(e) {
			continue
		}
		m := e.Msg
		if m.InPath(l.self) {
			e.Status = pipeline.Loop
			continue
		}
		if len(m.MessagePath) >= l.maxHops {
			reject(e, &slipstream.Error{Code: slipstream.CodeInvalid, MessageID: m.MessageID,
				Text: fmt.Sprintf("messagePath already has %d hops; the limit is %d", len(m.MessagePath), l.maxHops)})
			continue
		}
		m.MessagePath = append(m.MessagePath, l.self)
	}
	return batch, nil
}
