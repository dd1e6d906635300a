package daemon

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/slipstream-sync/slipstream/internal/admin"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// tapBuffer bounds the events a tap holds for its reader: when the reader
// is slower, events are dropped (and counted), never the pipeline held up.
const tapBuffer = 1024

// TapEvent is one envelope seen leaving a stage: a line of GET /v1/tap.
type TapEvent struct {
	Time       string          `json:"time"` // RFC 3339, when the stage passed it on
	Pipeline   string          `json:"pipeline"`
	Stage      string          `json:"stage"`
	Status     string          `json:"status"`
	Link       string          `json:"link,omitempty"`
	Type       string          `json:"type,omitempty"`
	MessageID  string          `json:"messageId,omitempty"`
	Origin     string          `json:"originInstanceId,omitempty"`
	Key        string          `json:"key,omitempty"`
	Value      json.RawMessage `json:"value,omitempty"`
	Tags       []string        `json:"targetedTags,omitempty"`
	Recipients []string        `json:"recipients,omitempty"`
	// Dropped, on a line of its own, counts events this tap lost since the
	// previous such line because its reader was too slow.
	Dropped uint64 `json:"dropped,omitempty"`
}

// tapQueue is a tap's bounded buffer: offer never blocks; when the buffer
// is full the event is dropped and counted.
type tapQueue struct {
	events  chan TapEvent
	dropped atomic.Uint64
}

func newTapQueue(n int) *tapQueue { return &tapQueue{events: make(chan TapEvent, n)} }

// offer queues ev, or counts it dropped when the queue is full.
func (q *tapQueue) offer(ev TapEvent) {
	select {
	case q.events <- ev:
	default:
		q.dropped.Add(1)
	}
}

func tapEvent(pipe, stage string, e *pipeline.Envelope) TapEvent {
	ev := TapEvent{Time: time.Now().UTC().Format(time.RFC3339Nano), Pipeline: pipe, Stage: stage, Status: e.Status.String(),
		Recipients: slices.Clone(e.Recipients)}
	if e.From != nil {
		ev.Link = e.From.ID()
	}
	if m := e.Msg; m != nil {
		ev.Type, ev.MessageID, ev.Origin, ev.Key = string(m.Type), m.MessageID, m.OriginInstanceID, m.Key
		ev.Value, ev.Tags = slices.Clone(m.Value), slices.Clone(m.TargetedTags)
	}
	return ev
}

// registerTap serves GET /v1/tap?stage=NAME[&pipeline=P]: newline-delimited
// JSON TapEvents of the envelopes leaving stage NAME (in every pipeline that
// has it, or in P), until the client goes away or the instance stops.
func (in *Instance) registerTap(s *admin.Server) {
	s.Handle("GET /v1/tap", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stage, pipe := r.URL.Query().Get("stage"), r.URL.Query().Get("pipeline")
		if stage == "" {
			admin.WriteError(w, http.StatusBadRequest, "the stage parameter is required: /v1/tap?stage=NAME[&pipeline=P]")
			return
		}
		var runners []*pipeline.Runner
		var known []string
		for _, rn := range in.runners {
			if pipe != "" && rn.Name != pipe {
				continue
			}
			for _, st := range rn.Stages {
				known = append(known, rn.Name+"/"+st.Kind)
				if st.Kind == stage {
					runners = append(runners, rn)
				}
			}
		}
		if len(runners) == 0 {
			msg := fmt.Sprintf("no stage %q", stage)
			if pipe != "" {
				msg += fmt.Sprintf(" in pipeline %q", pipe)
			}
			admin.WriteError(w, http.StatusNotFound, fmt.Sprintf("%s; the stages are: %v", msg, known))
			return
		}
		q := newTapQueue(tapBuffer)
		events := q.events
		for _, rn := range runners {
			name := rn.Name
			stop := rn.Tap(stage, func(e *pipeline.Envelope) { q.offer(tapEvent(name, stage, e)) })
			defer stop()
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		flusher, _ := w.(http.Flusher)
		if flusher != nil {
			flusher.Flush()
		}
		enc := json.NewEncoder(w)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case ev := <-events:
				if enc.Encode(ev) != nil {
					return
				}
				// Write what else is waiting before one flush.
				for n := len(events); n > 0; n-- {
					if enc.Encode(<-events) != nil {
						return
					}
				}
			case <-tick.C:
				d := q.dropped.Swap(0)
				if d == 0 {
					continue
				}
				if enc.Encode(TapEvent{Time: time.Now().UTC().Format(time.RFC3339Nano), Stage: stage, Dropped: d}) != nil {
					return
				}
			case <-r.Context().Done():
				return
			case <-s.Done():
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
	}))
}
