// Package pipeline is Slipstream's engine: the Source, Stage and Sink
// contracts, the registry of kinds, HCL loading with positioned diagnostics,
// and the runner that wires sources -> stages -> sinks over bounded channels
// with per-stage tracing and metrics.
//
// A message travels as an *Envelope. Sources emit envelopes, stages process
// them in batches (in order, one goroutine per stage), and the fanout stage
// hands the accepted ones to the pipeline's sinks.
package pipeline

import (
	"context"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
)

// Status is what the pipeline has decided about an envelope so far. Stages
// after the one that set a non-Accepted status pass the envelope through
// untouched, except `ack`, which acknowledges duplicates and loops too.
type Status uint8

const (
	Accepted  Status = iota // still travelling
	Duplicate               // seen within the dedup window: ACK, do not deliver
	Loop                    // own id already in messagePath: ACK, do not deliver
	Rejected                // answered with ERR: nothing stored, no ACK
	Consumed                // a control frame (ACK, ERR) handled by a stage
	Failed                  // could not be stored: no ACK, the sender retransmits
)

func (s Status) String() string {
	switch s {
	case Accepted:
		return "accepted"
	case Duplicate:
		return "duplicate"
	case Loop:
		return "loop"
	case Rejected:
		return "rejected"
	case Consumed:
		return "consumed"
	case Failed:
		return "failed"
	}
	return "unknown"
}

// Origin is the link an envelope arrived on. Sources provide it; stages use
// it to answer (ACK, ERR, replies) and for routing (never back to the origin).
type Origin interface {
	// ID is the link's stable id (an instance id for peers).
	ID() string
	// Tags are the link's tags.
	Tags() []string
	// IsPeer reports whether the remote is another Slipstream instance.
	IsPeer() bool
	// AllowCommands reports whether the link may issue slipstream.*
	// commands (allow_commands of its listener or peer block).
	AllowCommands() bool
	// Permissions restrict what the link may send (nil: nothing beyond
	// AllowCommands); decode refuses the rest with ERR forbidden.
	Permissions() *link.Permissions
	// Reply queues a control frame (ACK, ERR, a reply) to the link's live
	// connection. It never blocks on the network; when the link is down or
	// its queue is full the frame is dropped (the sender retransmits).
	Reply(m *slipstream.Message)
}

// Envelope carries one message through a pipeline. The runner owns the
// envelope; stages mutate it in place, from one goroutine at a time.
type Envelope struct {
	// Raw is the frame as received; decode parses it into Msg.
	Raw []byte
	// Msg is the decoded message (nil before decode).
	Msg *slipstream.Message
	// From is the link the frame arrived on; nil for internally made messages.
	From Origin
	// Ctx carries the message's trace context between stages.
	Ctx context.Context
	// Received is when the source read the frame.
	Received time.Time
	// Status is the pipeline's decision so far.
	Status Status
	// Recipients are the link ids chosen by tag_filter.
	Recipients []string
	// Seqs[i] is the outbox sequence number of Recipients[i], set by persist;
	// 0 when that link left between tag_filter and persist (nothing stored).
	Seqs []uint64
	// Encoded is the message as forwarded (sourceInstanceId = own id), set by
	// persist and stored in every outbox entry.
	Encoded []byte
	// Done, when set by the source, is called once by the runner when the
	// envelope leaves the pipeline: it passed the last stage, a stage dropped
	// it, its batch failed, or the pipeline stopped hard. Sources use it to
	// bound how many of a connection's messages are in flight.
	Done func()

	mark uint64 // runner bookkeeping: the batch round that passed it on
}

// finish calls Done once.
func (e *Envelope) finish() {
	if e.Done != nil {
		d := e.Done
		e.Done = nil
		d()
	}
}

// Context returns the envelope's context, never nil.
func (e *Envelope) Context() context.Context {
	if e.Ctx == nil {
		return context.Background()
	}
	return e.Ctx
}

// Stage is one step of a pipeline.
//
// The runner calls Process from a single goroutine per stage instance, one
// batch at a time, in arrival order; a batch holds 1..MaxBatch envelopes that
// were waiting when the stage became free (so group commit starts on arrival,
// not on a timer). Process returns the envelopes to pass on, normally the same
// slice; an envelope left out is dropped. Envelopes whose Status is not
// Accepted must be passed on unless the stage consumed them.
//
// An error means the whole batch failed and none of it is passed on (nothing
// was acknowledged, so senders retransmit); the runner counts and logs it and
// carries on with the next batch.
type Stage interface {
	Process(ctx context.Context, batch []*Envelope) ([]*Envelope, error)
}

// Source produces envelopes.
//
// The runner calls Run once, in its own goroutine. Run emits every envelope
// through emit, which blocks while the pipeline is full (back-pressure: the
// source stops reading its sockets) and returns false once the pipeline is
// shutting down. Run returns when ctx is cancelled, after it has stopped
// reading; connections may stay open so that ACKs of messages already in the
// pipeline still reach their senders. A non-nil error other than ctx's is
// fatal for the instance.
type Source interface {
	Run(ctx context.Context, emit func(*Envelope) bool) error
}

// Sink receives the accepted, persisted envelopes of a pipeline from the
// fanout stage.
//
// Deliver is called from the fanout stage's goroutine, once per batch, in
// order. It must not block on the network: deliveries to slow or absent links
// wait in their durable outboxes. An error fails the batch (see Stage).
type Sink interface {
	Deliver(ctx context.Context, batch []*Envelope) error
}

// Closer is implemented by sources, stages and sinks that hold resources.
// The runner calls Close once, after the pipeline has drained: sources first,
// then stages in order, then sinks.
type Closer interface {
	Close() error
}

// Starter is implemented by parts that need to start background work once
// the whole instance is built (for example link writers). Start is called
// once before any source runs; ctx is cancelled at hard stop.
type Starter interface {
	Start(ctx context.Context) error
}

// Readier is implemented by sources that can tell whether they serve (their
// listener is up); /readyz reports each.
type Readier interface {
	Ready() error
}
