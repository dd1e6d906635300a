package stages

import (
	"context"

	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/pipeline"
)

func init() {
	pipeline.Register(pipeline.Kind{
		Class: pipeline.ClassStage,
		Name:  "tag_filter",
		Summary: "Chooses each data message's recipients (routing step 5): every known link except the one it came from, " +
			"its origin and any instance already in its messagePath, and, when targetedTags is non-empty, only links " +
			"carrying at least one of those tags. Offline durable links are chosen too: their deliveries wait in their outboxes.",
		Example:   "stage \"tag_filter\" {}\n",
		NewConfig: func() any { return &noConfig{} },
		Build: func(_ any, bc *pipeline.BuildContext) (any, error) {
			return &TagFilter{links: bc.Links}, nil
		},
	})
}

// TagFilter is the tag_filter stage.
type TagFilter struct {
	links   *link.Registry
	scratch []*link.Link
}

var _ pipeline.Stage = (*TagFilter)(nil)

// Process implements pipeline.Stage.
func (t *TagFilter) Process(_ context.Context, batch []*pipeline.Envelope) ([]*pipeline.Envelope, error) {
	for _, e := range batch {
		if !isData(e) {
			continue
		}
		from := ""
		if e.From != nil {
			from = e.From.ID()
		}
		t.scratch = t.links.Recipients(t.scratch, from, e.Msg)
		ids := make([]string, len(t.scratch))
		for i, l := range t.scratch {
			ids[i] = l.ID()
		}
		e.Recipients = ids
	}
	return batch, nil
}
