package client

import (
	"context"
	"strconv"
	"time"
)

// DedupStore is where receivers remember which messages they have handled,
// keyed by (clusterGroupId, messageId) (DedupKey), so that Session.Subscribe
// calls its handler once per message even when the message arrives twice:
// redelivered after a lost ACK or a reconnection, or delivered by two
// redundant instances of one cluster group to receivers that share the
// store.
//
// A receiver claims a key before handling its message, marks it done after
// the handler returned nil, and releases the claim when the handler failed
// (the message is then redelivered and handled again). A claim lasts at most
// its lease, so a receiver that crashes while handling does not block the
// message for ever. Implementations: MemoryDedup (one process, bounded),
// client/redisdedup (shared by receivers in several processes) and
// client/badgerdedup (one process, survives restarts).
type DedupStore interface {
	// Claim reserves key for owner for lease. It returns Claimed when the
	// caller should handle the message (also when owner holds the claim
	// already), Handled when a receiver marked it done within the window,
	// and Busy while another owner's claim has not expired.
	Claim(ctx context.Context, key, owner string, lease time.Duration) (ClaimResult, error)
	// Done records that key's message was handled; it is remembered for
	// window from now.
	Done(ctx context.Context, key, owner string, window time.Duration) error
	// Release drops owner's claim on key (the handler failed), unless the
	// key is done or claimed by another owner.
	Release(ctx context.Context, key, owner string) error
}

// ClaimResult is the answer of DedupStore.Claim.
type ClaimResult int

const (
	// Claimed: the caller handles the message, then calls Done or Release.
	Claimed ClaimResult = iota
	// Handled: the message was handled within the window; ACK it without
	// handling it again.
	Handled
	// Busy: another receiver is handling it; do not ACK (the instance sends
	// it again, and by then it is Handled, or claimable after a failure).
	Busy
)

func (r ClaimResult) String() string {
	switch r {
	case Claimed:
		return "claimed"
	case Handled:
		return "handled"
	case Busy:
		return "busy"
	}
	return "ClaimResult(" + strconv.Itoa(int(r)) + ")"
}

// DedupKey is the key of a message in a DedupStore: the length of its
// clusterGroupId, then clusterGroupId and messageId, so that no two pairs
// share a key whatever characters they contain ("7:azure-1:msg-abc").
func DedupKey(clusterGroupID, messageID string) string {
	return strconv.Itoa(len(clusterGroupID)) + ":" + clusterGroupID + ":" + messageID
}
