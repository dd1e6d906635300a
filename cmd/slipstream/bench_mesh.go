package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/slipstream-sync/slipstream/sources"
)

// A mesh run (-mesh) starts meshSize in-process instances linked by
// websocket_client peers, publishes on the first and subscribes on the
// others: what a message costs from the instance it is published on to
// the clients of the instances it is replicated to.
const (
	meshSize     = 3
	meshLinkWait = 15 * time.Second // every peer link connected
)

// meshShapes are the links of each -mesh shape between instances 0..2; both
// ends of a pair dial each other (the instances keep one connection).
var meshShapes = map[string][][2]int{
	"triangle": {{0, 1}, {0, 2}, {1, 2}}, // every pair linked
	"line":     {{0, 1}, {1, 2}},         // A-B-C: C's messages from A cross B
}

// relayTrees are the same shapes for the relay baseline, which has no dedup
// and so must be a tree: {parent, child}, the child follows the parent. A
// triangle becomes a star (one hop to each subscriber's relay); a line stays
// a line.
var relayTrees = map[string][][2]int{
	"triangle": {{0, 1}, {0, 2}},
	"line":     {{0, 1}, {1, 2}},
}

func meshShapeNames() string { return "triangle, line" }

// meshTarget is where a mesh run sends its load: the publishers on the
// first instance, -subscribers on each of the others.
func meshTarget(label string, urls, names []string, tag string, locals []*localInstance) *benchTarget {
	return &benchTarget{label: label, tag: tag, pubURL: urls[0], subURLs: urls[1:], names: names[1:], locals: locals}
}

// benchMesh runs the load against a mesh of in-process instances and stops
// them (removing their data) before returning.
func benchMesh(ctx context.Context, o *benchOptions, tag string, stderr io.Writer) (*loadResult, error) {
	nodes, err := startMesh(o.Mesh, tag, stderr)
	if err != nil {
		return nil, fmt.Errorf("bench: start the %s mesh: %w", o.Mesh, err)
	}
	urls, names := make([]string, len(nodes)), make([]string, len(nodes))
	for i, n := range nodes {
		urls[i], names[i] = n.url, n.id
	}
	t := meshTarget("slipstream", urls, names, tag, nodes)
	t.memProfile = o.MemProfile
	res, err := runLoad(ctx, o, t, stderr)
	if serr := stopMesh(nodes); serr != nil && err == nil {
		err = fmt.Errorf("bench: stop the mesh: %w", serr)
	}
	return res, err
}

// startMesh starts the instances bench-1..3 on pre-picked 127.0.0.1 ports,
// linked as shape says with peer links tagged tag (the run's targetedTags,
// so that the messages are routed across them), and waits until every link
// is connected.
func startMesh(shape, tag string, logs io.Writer) (nodes []*localInstance, err error) {
	held := make([]net.Listener, meshSize)
	defer func() {
		for _, ln := range held {
			if ln != nil {
				ln.Close()
			}
		}
		if err != nil {
			err = errors.Join(err, stopMesh(nodes))
		}
	}()
	// The ports stay bound until their instance starts, so that no outgoing
	// connection (a peer dialling early) takes one as its local port.
	ids, addrs := make([]string, meshSize), make([]string, meshSize)
	for i := range meshSize {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		held[i], ids[i], addrs[i] = ln, fmt.Sprintf("bench-%d", i+1), ln.Addr().String()
	}
	peers := make([][]sources.PeerConfig, meshSize)
	for _, p := range meshShapes[shape] {
		for _, e := range [][2]int{p, {p[1], p[0]}} {
			peers[e[0]] = append(peers[e[0]], sources.PeerConfig{ID: ids[e[1]],
				URL: "ws://" + addrs[e[1]] + "/ws", Tags: []string{tag}})
		}
	}
	for i := range meshSize {
		held[i].Close()
		held[i] = nil
		n, err := startLocal(logs, localSpec{ID: ids[i], Tags: []string{ids[i], tag}, Listen: addrs[i], Peers: peers[i]})
		if err != nil {
			return nodes, fmt.Errorf("%s: %w", ids[i], err)
		}
		nodes = append(nodes, n)
	}
	return nodes, awaitMeshLinks(nodes)
}

// awaitMeshLinks polls the link registries until every instance has every
// peer it dials connected.
func awaitMeshLinks(nodes []*localInstance) error {
	deadline := time.Now().Add(meshLinkWait)
	for {
		var down []string
		for _, n := range nodes {
			for _, p := range n.peers {
				if l := n.in.Links().Get(p); l == nil || !l.Connected() {
					down = append(down, n.id+"->"+p)
				}
			}
		}
		if len(down) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("peer links not connected after %s: %s", meshLinkWait, strings.Join(down, ", "))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stopMesh stops the instances, the last started first.
func stopMesh(nodes []*localInstance) error {
	var errs []error
	for i := len(nodes) - 1; i >= 0; i-- {
		if err := nodes[i].stop(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", nodes[i].id, err))
		}
	}
	return errors.Join(errs...)
}

// relayMeshLoad runs the load against relays relay-1..3 chained as the
// shape's relayTrees says (the -mesh baseline), and closes them.
func relayMeshLoad(ctx context.Context, o *benchOptions, tag string, stderr io.Writer) (res *loadResult, err error) {
	var relays []*relay
	defer func() {
		for i := len(relays) - 1; i >= 0; i-- {
			relays[i].close()
		}
	}()
	urls, names := make([]string, meshSize), make([]string, meshSize)
	for i := range meshSize {
		r, err := startRelay()
		if err != nil {
			return nil, fmt.Errorf("bench: start a relay: %w", err)
		}
		relays = append(relays, r)
		urls[i], names[i] = r.url(), fmt.Sprintf("relay-%d", i+1)
	}
	for _, e := range relayTrees[o.Mesh] {
		if err := relays[e[1]].follow(urls[e[0]], names[e[1]], []string{tag}); err != nil {
			return nil, fmt.Errorf("bench: link %s to %s: %w", names[e[1]], names[e[0]], err)
		}
	}
	return runLoad(ctx, o, meshTarget("relay", urls, names, tag, nil), stderr)
}
