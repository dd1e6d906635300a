package sources

import (
	"bytes"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// This file decides which link an inbound connection belongs to
// (PROTOCOL.md "Identity"): the query string at upgrade time, then possibly
// a HELLO as the first frame.

// specFromQuery derives the link of a new connection from its URL query:
// ?id= names a durable client link, ?tags=a,b replaces default_tags and
// ?acks=false opts out of ACKs. Without an id the link is ephemeral
// (con-<random>). The error (HTTP 400) names the bad parameter.
func (s *Server) specFromQuery(q url.Values) (link.Spec, error) {
	spec := link.Spec{Tags: s.cfg.DefaultTags, Acks: s.cfg.Acks}
	if v := q.Get("tags"); v != "" {
		spec.Tags = splitTags(v)
		if err := checkTags(spec.Tags); err != nil {
			return spec, fmt.Errorf("tags: %w", err)
		}
	}
	if v := q.Get("acks"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return spec, fmt.Errorf("acks: want true or false, got %q", v)
		}
		spec.Acks = b
	}
	id := q.Get("id")
	if id == "" {
		spec.ID = link.NewEphemeralID()
		spec.Perms, spec.Commands = s.cfg.access(spec.ID)
		return spec, nil
	}
	if err := checkLinkID(id); err != nil {
		return spec, fmt.Errorf("id: %w", err)
	}
	if id == s.self.ID {
		return spec, fmt.Errorf("id: %q is this instance's own id", id)
	}
	spec.ID, spec.Durable = id, true
	spec.Perms, spec.Commands = s.cfg.access(spec.ID)
	if q.Get("tags") == "" {
		spec.Tags = s.unannouncedTags(id, spec.Tags)
	}
	return spec, nil
}

// unannouncedTags returns the tags of link id when its remote announces
// none: an inbound_peer's declared tags, else tags (default_tags).
func (s *Server) unannouncedTags(id string, tags []string) []string {
	if declared, ok := s.cfg.inboundTags(id); ok {
		return declared
	}
	return tags
}

// splitTags splits a comma-separated tag list, dropping blanks.
func splitTags(v string) []string {
	var tags []string
	for t := range strings.SplitSeq(v, ",") {
		if t = strings.TrimSpace(t); t != "" {
			tags = append(tags, t)
		}
	}
	return tags
}

// checkTags applies the protocol's tag limits (32 tags of at most 64 bytes).
func checkTags(tags []string) error {
	if len(tags) > slipstream.DefaultMaxTags {
		return fmt.Errorf("%d tags; the limit is %d", len(tags), slipstream.DefaultMaxTags)
	}
	for _, t := range tags {
		if t == "" || len(t) > slipstream.DefaultMaxTagLen || !utf8.ValidString(t) || strings.IndexByte(t, 0) >= 0 {
			return fmt.Errorf("tag %q must be 1 to %d bytes of UTF-8 without NUL", t, slipstream.DefaultMaxTagLen)
		}
	}
	return nil
}

// checkLinkID applies the protocol's id rules (at most 128 bytes, no NUL).
func checkLinkID(id string) error {
	if id == "" || len(id) > slipstream.DefaultMaxMessageID || !utf8.ValidString(id) || strings.IndexByte(id, 0) >= 0 {
		return fmt.Errorf("must be 1 to %d bytes of UTF-8 without NUL", slipstream.DefaultMaxMessageID)
	}
	return nil
}

// helloFrame returns frame decoded when it is a HELLO, else nil (the frame
// then goes to the pipeline, whose decode stage answers it if it is bad).
func (s *Server) helloFrame(frame []byte) *slipstream.Message {
	if !bytes.Contains(frame, []byte("HELLO")) {
		return nil
	}
	m, err := slipstream.Decode(frame, &slipstream.Limits{MaxFrame: s.cfg.MaxFrame})
	if err != nil || m.Type != slipstream.TypeHELLO {
		return nil
	}
	return m
}

// hello handles a HELLO that is the first frame of c, which is attached to
// cur as spec. On success c belongs to the durable link the HELLO names,
// which is returned with its spec, and our HELLO is queued. A
// *slipstream.Error is a refusal to answer with ERR (c stays on cur); any
// other error means c was closed.
func (s *Server) hello(c *Conn, cur *link.Link, spec link.Spec, m *slipstream.Message) (*link.Link, link.Spec, error) {
	if err := m.Validate(&slipstream.Limits{MaxFrame: s.cfg.MaxFrame}); err != nil {
		return nil, spec, err
	}
	if err := s.checkHelloIdentity(c, spec, m); err != nil { // certid.go: c is closed
		return nil, spec, err
	}
	switch {
	case m.InstanceID == "":
		return nil, spec, &slipstream.Error{Code: slipstream.CodeInvalid, MessageID: m.MessageID,
			Text: "HELLO instanceId is required"}
	case m.InstanceID == s.self.ID:
		return nil, spec, &slipstream.Error{Code: slipstream.CodeInvalid, MessageID: m.MessageID,
			Text: fmt.Sprintf("HELLO instanceId %q is this instance's own id", m.InstanceID)}
	}
	next := link.Spec{ID: m.InstanceID, Tags: spec.Tags, Peer: m.Role == slipstream.RolePeer,
		Acks: spec.Acks, Durable: true}
	next.Perms, next.Commands = s.cfg.access(next.ID)
	if len(m.Tags) > 0 {
		next.Tags = m.Tags
	} else if cur.ID() != next.ID {
		// The connection's tags were chosen for another link (con-...):
		// those of a declared inbound peer apply.
		next.Tags = s.unannouncedTags(next.ID, next.Tags)
	}
	if m.Acks != nil {
		next.Acks = *m.Acks
	}
	if next.ID != cur.ID() {
		s.links.Detach(cur, c)
	}
	// Our HELLO is queued once the link is registered (a recipient) and
	// before its writer sees c: the remote learns it is attached only when
	// it is, and the HELLO precedes every pending delivery. If c is closed
	// meanwhile, the read loop's next read fails and detaches it.
	reply := ourHello(s.self)
	l, err := s.links.AttachWith(next, c, func() { c.SendControl(reply) })
	if err != nil {
		s.refuseAttach(c, next.ID, err)
		return nil, spec, err
	}
	s.log.Info("link identified by HELLO", "link", l.ID(), "was", cur.ID(), "peer", l.IsPeer(), "acks", l.Acks())
	return l, next, nil
}

// ourHello is our HELLO (PROTOCOL.md "Control frames"): the answer of
// websocket_server and the first frame websocket_client sends.
func ourHello(self pipeline.Instance) []byte {
	acks := true
	return slipstream.Encode(&slipstream.Message{
		Type:           slipstream.TypeHELLO,
		Protocol:       slipstream.ProtocolVersion,
		InstanceID:     self.ID,
		ClusterGroupID: self.ClusterGroup,
		Tags:           self.Tags,
		Role:           slipstream.RolePeer,
		Acks:           &acks,
	})
}
