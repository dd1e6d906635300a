package daemon

import (
	"cmp"
	"net/http"
	"runtime/debug"
	"slices"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/slipstream-sync/slipstream/internal/admin"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// Status is what GET /v1/status answers (and the slipstream.stats command
// reports): the instance, its links and its pipelines' stage counters.
type Status struct {
	Instance  InstanceStatus   `json:"instance"`
	Links     []LinkStatus     `json:"links"`
	Pipelines []PipelineStatus `json:"pipelines"`
}

// InstanceStatus identifies the instance.
type InstanceStatus struct {
	ID            string   `json:"id"`
	ClusterGroup  string   `json:"cluster_group"`
	Tags          []string `json:"tags"`
	Version       string   `json:"version"`
	Started       string   `json:"started"` // RFC 3339
	UptimeSeconds float64  `json:"uptime_seconds"`
}

// LinkStatus is one link known to the instance.
type LinkStatus struct {
	ID      string   `json:"id"`
	Kind    string   `json:"kind"`  // peer or client
	State   string   `json:"state"` // connected or down
	Tags    []string `json:"tags"`
	Durable bool     `json:"durable"`
	// Declared: the configuration names the link (a websocket_client peer
	// block or a websocket_server inbound_peer); only other durable links
	// can be forgotten (DELETE /v1/links/{id}).
	Declared bool `json:"declared,omitempty"`
	// Pending is the outbox depth (deliveries not yet acknowledged) of a
	// durable link; OldestPendingSeconds the age of its oldest entry.
	Pending              int64   `json:"pending"`
	OldestPendingSeconds float64 `json:"oldest_pending_seconds"`
	LastError            string  `json:"last_error,omitempty"`
	// Dialer is what this instance's dialler of a configured peer is
	// doing (connected, connecting, backoff, cooldown, stopped).
	Dialer string `json:"dialer,omitempty"`
}

// PipelineStatus is one pipeline's stages, in order.
type PipelineStatus struct {
	Name   string                `json:"name"`
	Stages []pipeline.StageStats `json:"stages"`
}

// version is the module version the binary was built from ("dev" when
// built from a checkout).
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// Status assembles the instance's status now. The outbox figures come from
// the sinks' slipstream_outbox_depth and slipstream_outbox_oldest_seconds
// gauges (one Gather of the registry).
func (in *Instance) Status() Status {
	now := time.Now()
	st := Status{
		Instance: InstanceStatus{
			ID: in.cfg.Instance.ID, ClusterGroup: in.cfg.Instance.ClusterGroup,
			Tags: nonNil(in.cfg.Instance.Tags), Version: version(),
			Started: in.created.UTC().Format(time.RFC3339), UptimeSeconds: now.Sub(in.created).Seconds(),
		},
		Links:     []LinkStatus{},
		Pipelines: []PipelineStatus{},
	}
	depth, oldest := in.outboxGauges()
	type dialers interface {
		PeerState(id string) string
		PeerLastError(id string) string
	}
	for _, l := range in.links.All() {
		ls := LinkStatus{ID: l.ID(), Kind: "client", State: "down", Tags: nonNil(l.Tags()), Durable: l.Durable(), Declared: l.Declared(),
			Pending: int64(depth[l.ID()]), OldestPendingSeconds: oldest[l.ID()]}
		if l.IsPeer() {
			ls.Kind = "peer"
		}
		if l.Connected() {
			ls.State = "connected"
		}
		for _, src := range in.sources {
			if d, ok := src.(dialers); ok && ls.Dialer == "" {
				ls.Dialer = d.PeerState(l.ID())
				ls.LastError = d.PeerLastError(l.ID())
			}
		}
		st.Links = append(st.Links, ls)
	}
	slices.SortFunc(st.Links, func(a, b LinkStatus) int {
		if a.Kind != b.Kind {
			return -cmp.Compare(a.Kind, b.Kind) // peers first
		}
		return cmp.Compare(a.ID, b.ID)
	})
	for _, r := range in.runners {
		st.Pipelines = append(st.Pipelines, PipelineStatus{Name: r.Name, Stages: r.Stats()})
	}
	return st
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// outboxGauges reads the outbox gauges by link from the registry.
func (in *Instance) outboxGauges() (depth, oldest map[string]float64) {
	depth, oldest = map[string]float64{}, map[string]float64{}
	mfs, err := in.metrics.Gather()
	if err != nil {
		in.log.Warn("status: gathering metrics", "err", err)
	}
	for _, mf := range mfs {
		var into map[string]float64
		switch mf.GetName() {
		case "slipstream_outbox_depth":
			into = depth
		case "slipstream_outbox_oldest_seconds":
			into = oldest
		default:
			continue
		}
		for _, m := range mf.GetMetric() {
			if l := labelValue(m, "link"); l != "" {
				into[l] = m.GetGauge().GetValue()
			}
		}
	}
	return depth, oldest
}

func labelValue(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

// registerStatus serves GET /v1/status.
func (in *Instance) registerStatus(s *admin.Server) {
	s.Handle("GET /v1/status", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		admin.WriteJSON(w, http.StatusOK, in.Status())
	}))
}
