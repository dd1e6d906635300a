package link

import (
	"fmt"
	"slices"

	slipstream "github.com/slipstream-sync/slipstream"
)

// Permissions say what a link may do (issue "Security", docs/SECURITY.md).
// A nil *Permissions allows everything except slipstream.* commands, which
// Spec.Commands governs. Permissions are configuration: they are not
// recorded in the store, and the connection's source sets them at every
// attach.
type Permissions struct {
	// Publish lists the message types the link may send: data types (SK,
	// SA, SW, CMD) and gets (GK, GA, GW: reading state). Nil: all of them.
	// ACK, ERR, HELLO and replies are always allowed.
	Publish []slipstream.Type
	// Targets lists the tags the link may name in targetedTags. Nil: any
	// tag, and untargeted messages (which go everywhere). Non-nil: every
	// message must carry targetedTags, each of them in the list.
	Targets []string
}

// Check reports why m may not be sent by a link with permissions p, or nil.
// Replies and control frames are always allowed.
func (p *Permissions) Check(m *slipstream.Message) error {
	if p == nil || m.IsReply() {
		return nil
	}
	switch m.Type {
	case slipstream.TypeACK, slipstream.TypeERR, slipstream.TypeHELLO:
		return nil
	}
	if p.Publish != nil && !slices.Contains(p.Publish, m.Type) {
		return fmt.Errorf("may not publish %s messages", m.Type)
	}
	if p.Targets != nil {
		if len(m.TargetedTags) == 0 {
			return fmt.Errorf("must name targetedTags (allowed: %v)", p.Targets)
		}
		for _, t := range m.TargetedTags {
			if !slices.Contains(p.Targets, t) {
				return fmt.Errorf("may not target tag %q (allowed: %v)", t, p.Targets)
			}
		}
	}
	return nil
}
