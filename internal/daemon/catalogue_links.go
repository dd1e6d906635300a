package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/slipstream-sync/slipstream/internal/link"
)

// linkGauges reports slipstream_links{kind,state} at scrape time from the
// link registry: how many links of each kind (peer, client) are connected
// or disconnected (a durable link stays known while it is away; an
// ephemeral one is gone when its connection ends). Every combination is
// reported, zeros included, so that "no peer connected" is a value.
type linkGauges struct {
	links *link.Registry
	desc  *prometheus.Desc
}

var _ prometheus.Collector = (*linkGauges)(nil)

func newLinkGauges(r *link.Registry) *linkGauges {
	return &linkGauges{links: r, desc: prometheus.NewDesc("slipstream_links",
		"Links known to this instance by kind (peer, client) and state (connected, disconnected).",
		[]string{"kind", "state"}, nil)}
}

// Describe implements prometheus.Collector.
func (g *linkGauges) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

// Collect implements prometheus.Collector.
func (g *linkGauges) Collect(ch chan<- prometheus.Metric) {
	var n [2][2]int // [peer][connected]
	for _, l := range g.links.All() {
		n[b2i(l.IsPeer())][b2i(l.Connected())]++
	}
	for p, kind := range []string{"client", "peer"} {
		for c, state := range []string{"disconnected", "connected"} {
			ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, float64(n[p][c]), kind, state)
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
