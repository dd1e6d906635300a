package client

import (
	"context"
	"errors"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
)

// Handler handles one delivery for Session.Subscribe. Returning nil
// acknowledges a data message (the instance stops sending it); an error
// leaves it unacknowledged, so the instance sends it again after its
// ack_timeout (doubling up to backoff_max, until max_attempts sends, after
// which it goes to the instance's dead-letter store). A handler runs for one
// delivery at a time, in arrival order; a redelivery comes after the
// deliveries that followed it. Requests delivered to the application (gets
// and application commands) reach the handler too: answer them with
// Delivery.Reply; they are not acknowledged and not deduplicated.
type Handler func(ctx context.Context, d *Delivery) error

// SubscribeOptions configure Session.Subscribe. The zero value handles
// every delivery with at-least-once semantics: a message whose ACK was lost
// (the connection broke after the handler returned) reaches the handler
// again.
type SubscribeOptions struct {
	// Dedup, when set, makes the handler see each (clusterGroupId,
	// messageId) once within Window: a delivery whose key the store knows
	// as handled is acknowledged without calling the handler. Share one
	// store between the sessions that receive the same messages (one
	// application connected to two redundant instances of a cluster group):
	// MemoryDedup inside one process, client/redisdedup across processes,
	// client/badgerdedup to survive the receiver's restarts.
	Dedup DedupStore
	// Window is how long a handled key is remembered. Default 24h; it
	// should cover the instances' redelivery horizon (max_age of their
	// outboxes).
	Window time.Duration
	// Lease is how long a claim on a key lasts while the handler runs; a
	// receiver that crashes mid-handler blocks the message (and the other
	// receivers, which wait for its outcome) for at most this long. Default
	// 30s; longer than the slowest handler.
	Lease time.Duration
	// OnError is called with each delivery left for redelivery and why: the
	// handler's error, or the dedup store's. It runs on the subscriber's
	// goroutine and must not block for long.
	OnError func(d *Delivery, err error)
}

// Subscribe hands every delivery of the session's connections to h, one at
// a time, across reconnections, and acknowledges each data message after h
// returns nil. It runs until ctx is done (returning ctx's error) or the
// session closes (ErrClosed). One Subscribe runs per session at a time
// (ErrSubscribed); the session's Options.AutoAck must be off, since it
// acknowledges before h runs.
//
// While nothing subscribes, deliveries wait in the connection's buffer
// (Options.Buffer), and then the connection stops being read: which also
// holds back the ACKs of publishes on it. A session that receives messages
// should subscribe before it publishes.
func (s *Session) Subscribe(ctx context.Context, h Handler, o SubscribeOptions) error {
	if s.o.AutoAck {
		return errors.New("slipstream client: Subscribe acknowledges after the handler; the session's Options.AutoAck must be off")
	}
	if !s.subscribing.CompareAndSwap(false, true) {
		return ErrSubscribed
	}
	defer s.subscribing.Store(false)
	if o.Window <= 0 {
		o.Window = defaultWindow
	}
	if o.Lease <= 0 {
		o.Lease = defaultLease
	}
	for {
		c, err := s.Client(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
	deliveries:
		for {
			select {
			case d, ok := <-c.Deliveries():
				if !ok {
					break deliveries // the connection ended; wait for the next
				}
				s.handle(ctx, d, h, &o)
			case <-ctx.Done():
				return ctx.Err()
			case <-s.closing:
				return ErrClosed
			}
		}
	}
}

// handle runs h for one delivery and acknowledges it, deduplicating data
// messages through o.Dedup when set.
func (s *Session) handle(ctx context.Context, d *Delivery, h Handler, o *SubscribeOptions) {
	if !d.Msg.Type.IsData() || d.Msg.IsReply() {
		if err := h(ctx, d); err != nil {
			s.failed.Add(1)
			s.report(o, d, err)
		} else {
			s.handled.Add(1)
		}
		return
	}
	if o.Dedup == nil {
		if err := h(ctx, d); err != nil {
			s.failed.Add(1)
			s.report(o, d, err)
			return
		}
		s.handled.Add(1)
		_ = d.Ack() // a lost connection: the instance sends it again
		return
	}
	key := DedupKey(d.Msg.ClusterGroupID, d.Msg.MessageID)
	claim, err := s.claim(ctx, o, key)
	if err != nil {
		s.failed.Add(1)
		s.report(o, d, &DedupError{Op: "claim", Err: err})
		return
	}
	if claim == Handled {
		s.duplicates.Add(1)
		_ = d.Ack()
		return
	}
	herr := h(ctx, d)
	// The handler ran: record the outcome even when ctx has just ended.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	if herr != nil {
		s.failed.Add(1)
		if err := o.Dedup.Release(sctx, key, s.owner); err != nil {
			herr = errors.Join(herr, &DedupError{Op: "release", Err: err})
		}
		s.report(o, d, herr)
		return
	}
	s.handled.Add(1)
	if err := o.Dedup.Done(sctx, key, s.owner, o.Window); err != nil {
		// The effect happened: acknowledge anyway (not doing so would
		// certainly run it again); a copy arriving later may run it again.
		s.report(o, d, &DedupError{Op: "done", Err: err})
	}
	_ = d.Ack()
}

// claim claims key; while another receiver holds it, it waits (polling
// from 2ms, doubling up to 100ms) until that receiver is done (Handled) or
// gave up or lost its lease (Claimed): so the deliveries after this one are
// not held back behind a redelivery, and nothing is left unacknowledged for
// the instance to send again.
func (s *Session) claim(ctx context.Context, o *SubscribeOptions, key string) (ClaimResult, error) {
	wait := 2 * time.Millisecond
	for waited := false; ; {
		r, err := o.Dedup.Claim(ctx, key, s.owner, o.Lease)
		if err != nil || r != Busy {
			return r, err
		}
		if !waited {
			s.busy.Add(1)
			waited = true
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return Busy, ctx.Err()
		case <-s.closing:
			t.Stop()
			return Busy, ErrClosed
		}
		wait = min(2*wait, 100*time.Millisecond)
	}
}

func (s *Session) report(o *SubscribeOptions, d *Delivery, err error) {
	if o.OnError != nil {
		o.OnError(d, err)
	}
}

// DedupError is a DedupStore failure seen by Subscribe: Op is "claim" (the
// delivery was not handled and is left for redelivery), "release" (the
// handler failed and the claim stays until its lease ends) or "done" (the
// delivery was handled and acknowledged, but a later copy may be handled
// again).
type DedupError struct {
	Op  string
	Err error
}

func (e *DedupError) Error() string {
	return "slipstream client: dedup store " + e.Op + ": " + e.Err.Error()
}
func (e *DedupError) Unwrap() error { return e.Err }

// Reply answers the delivered request (a get or an application command)
// on the connection it came in on; see Client.Reply.
func (d *Delivery) Reply(reply *slipstream.Message) error {
	if d.c == nil {
		return ErrClosed
	}
	return d.c.Reply(d.Msg, reply)
}
