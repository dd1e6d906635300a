// Package stages holds Slipstream's stage kinds, one file each, registered
// with the pipeline registry in init. In the default pipeline they run in the
// order of PROTOCOL.md "Routing, step by step":
//
//	decode -> loop_check -> dedup -> tag_filter -> persist -> ack -> fanout
//
// decode parses and validates frames and fills missing fields on entry;
// loop_check drops messages that came back and appends the own id to the path;
// dedup drops copies seen within the window; tag_filter chooses the recipient
// links; persist writes each message with its dedup marker and outbox entries
// in one synced transaction per batch; ack acknowledges senders (and consumes
// ACK and ERR frames from links); fanout hands the batch to the sinks.
//
// Every stage passes on envelopes whose Status is not Accepted untouched,
// except ack, which acknowledges duplicates and loops and then drops every
// envelope that is finished.
package stages

import (
	"github.com/slipstream-sync/slipstream/pipeline"
)

// isData reports whether e is a still-travelling data message.
func isData(e *pipeline.Envelope) bool {
	return e.Status == pipeline.Accepted && e.Msg != nil && e.Msg.Type.IsData() && !e.Msg.IsReply()
}

// noConfig is the config of stages that take no settings.
type noConfig struct{}
