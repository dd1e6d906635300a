package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/slipstream-sync/slipstream/internal/admin"
	"github.com/slipstream-sync/slipstream/internal/telemetry"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// The built-in slipstream.* commands, run by the command stage of each
// instance a CMD reaches (PROTOCOL.md "Requests and replies"). docs/protocol.md
// lists them; `slipstream.help` answers the same list at run time.

// decodeArgs decodes a command's args object into v; absent args leave v
// as it is. Unknown members are refused so that a typo is not ignored.
func decodeArgs(args json.RawMessage, v any) error {
	if len(args) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(args))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad args: %w", err)
	}
	return nil
}

// Stats is the answer of slipstream.stats: the instance's status (as
// GET /v1/status) plus its log level, the requests awaiting replies and
// the dead letters per link.
type Stats struct {
	Status
	LogLevel        string         `json:"log_level"`
	PendingRequests int            `json:"pending_requests"`
	DeadLetters     map[string]int `json:"dead_letters"`
}

// stats gathers what slipstream.stats answers.
func (in *Instance) stats() (Stats, error) {
	s := Stats{Status: in.Status(), LogLevel: telemetry.LevelName(in.level.Level()),
		PendingRequests: in.links.Requests().Len(), DeadLetters: map[string]int{}}
	dead, err := in.store.DLQStats("")
	if err != nil {
		return s, err
	}
	for id, d := range dead {
		s.DeadLetters[id] = d.Count
	}
	return s, nil
}

// registerCommands fills in.commands with the built-in commands.
func (in *Instance) registerCommands(dlq *admin.DLQ) {
	c := in.commands
	c.Register(pipeline.Command{Name: "slipstream.ping", Summary: "answers with the instance id and its clock",
		Run: func(context.Context, json.RawMessage) (any, error) {
			return map[string]any{"pong": true, "instanceId": in.cfg.Instance.ID, "time": time.Now().UTC().Format(time.RFC3339Nano)}, nil
		}})
	c.Register(pipeline.Command{Name: "slipstream.stats", Summary: "the instance status (as GET /v1/status: links, outboxes, per-stage counters), log level, pending requests, dead letters per link",
		Run: func(context.Context, json.RawMessage) (any, error) { return in.stats() }})
	c.Register(pipeline.Command{Name: "slipstream.set_log_level", Summary: "changes the log level at once", Args: `{"level":"debug|info|warn|error"}`,
		Run: func(_ context.Context, args json.RawMessage) (any, error) {
			var a struct {
				Level string `json:"level"`
			}
			if err := decodeArgs(args, &a); err != nil {
				return nil, err
			}
			if a.Level == "" {
				return nil, errors.New(`args.level is required: {"level":"debug|info|warn|error"}`)
			}
			l, err := telemetry.ParseLevel(a.Level)
			if err != nil {
				return nil, err
			}
			prev := in.level.Level()
			in.SetLogLevel(l)
			in.log.Warn("log level changed by command", "from", prev.String(), "to", l.String())
			return map[string]string{"level": telemetry.LevelName(l), "previous": telemetry.LevelName(prev)}, nil
		}})
	c.Register(pipeline.Command{Name: "slipstream.dlq.list", Summary: "lists dead letters (of one link, or all)", Args: `{"link":"ID","limit":100}`,
		Run: func(_ context.Context, args json.RawMessage) (any, error) {
			a := struct {
				Link  string `json:"link"`
				Limit int    `json:"limit"`
			}{Limit: admin.DefaultListLimit}
			if err := decodeArgs(args, &a); err != nil {
				return nil, err
			}
			if a.Limit <= 0 || a.Limit > admin.MaxListLimit {
				return nil, fmt.Errorf("limit must be between 1 and %d", admin.MaxListLimit)
			}
			return dlq.List(a.Link, a.Limit)
		}})
	c.Register(pipeline.Command{Name: "slipstream.dlq.replay", Summary: "moves dead letters back to their links' outboxes (all, one link's, or some seqs of one link)",
		Args: `{"link":"ID","seqs":[1,2]}`,
		Run: func(_ context.Context, args json.RawMessage) (any, error) {
			var sel admin.Selection
			if err := decodeArgs(args, &sel); err != nil {
				return nil, err
			}
			n, err := dlq.Replay(sel)
			return map[string]int{"replayed": n}, err
		}})
	c.Register(pipeline.Command{Name: "slipstream.dlq.purge", Summary: "deletes dead letters for good (all, one link's, or some seqs of one link)",
		Args: `{"link":"ID","seqs":[1,2]}`,
		Run: func(_ context.Context, args json.RawMessage) (any, error) {
			var sel admin.Selection
			if err := decodeArgs(args, &sel); err != nil {
				return nil, err
			}
			n, err := dlq.Purge(sel)
			return map[string]int{"purged": n}, err
		}})
	c.Register(pipeline.Command{Name: "slipstream.help", Summary: "lists the commands of this instance",
		Run: func(context.Context, json.RawMessage) (any, error) {
			type entry struct {
				Name    string `json:"name"`
				Summary string `json:"summary"`
				Args    string `json:"args,omitempty"`
			}
			var out []entry
			for _, cmd := range c.All() {
				out = append(out, entry{cmd.Name, cmd.Summary, cmd.Args})
			}
			return out, nil
		}})
}

// LogLevel is the current log level.
func (in *Instance) LogLevel() slog.Level { return in.level.Level() }
