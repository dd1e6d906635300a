package stages

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/telemetry"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// CommandConfig configures the command stage.
type CommandConfig struct {
	Timeout time.Duration `hcl:"timeout,optional" doc:"longest a slipstream.* command may run before it is answered with an error"`
}

// Validate implements pipeline.Validator.
func (c *CommandConfig) Validate() error {
	if c.Timeout < 100*time.Millisecond {
		return &pipeline.FieldError{Field: "timeout", Err: errors.New("must be at least 100ms")}
	}
	return nil
}

func init() {
	pipeline.Register(pipeline.Kind{
		Class: pipeline.ClassStage,
		Name:  "command",
		Summary: "Runs the slipstream.* commands (CMD) targeted at this instance and answers each with a CMD reply " +
			"(inReplyTo, and result or error) to the link it came in on. Only links with allow_commands may send them: " +
			"decode refuses the others with ERR forbidden before anything is stored. A command runs once per instance " +
			"(copies are dropped by dedup) and is forwarded to peers only; other commands are application data, " +
			"delivered to clients. `slipstream.help` lists the commands.",
		Example:   "stage \"command\" {\n  timeout = \"30s\"\n}\n",
		NewConfig: func() any { return &CommandConfig{Timeout: 30 * time.Second} },
		Build: func(cfg any, bc *pipeline.BuildContext) (any, error) {
			c := &Command{self: bc.Instance.ID, cluster: bc.Instance.ClusterGroup, tags: bc.Instance.Tags,
				commands: bc.Commands, timeout: cfg.(*CommandConfig).Timeout, log: bc.Logger, now: time.Now}
			var err error
			c.runs, err = telemetry.RegisterShared(bc.Metrics, prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "slipstream_commands_total",
				Help: "slipstream.* commands run by this instance, by command (\"unknown\" for names it does not know) and outcome (ok, error).",
			}, []string{"command", "outcome"}))
			return c, err
		},
	})
}

// Command is the command stage.
type Command struct {
	self     string
	cluster  string
	tags     []string
	commands *pipeline.Commands
	timeout  time.Duration
	log      *slog.Logger
	now      func() time.Time
	runs     *prometheus.CounterVec
}

var _ pipeline.Stage = (*Command)(nil)

// Process implements pipeline.Stage. Commands run one at a time, in order,
// on the stage's goroutine.
func (c *Command) Process(ctx context.Context, batch []*pipeline.Envelope) ([]*pipeline.Envelope, error) {
	for _, e := range batch {
		if !isData(e) || !IsInstanceCommand(e.Msg) || !forSelf(c.tags, e.Msg) {
			continue
		}
		r := c.run(ctx, e)
		if e.From != nil {
			e.From.Reply(r)
		}
	}
	return batch, nil
}

// run executes e's command and returns the reply.
func (c *Command) run(ctx context.Context, e *pipeline.Envelope) *slipstream.Message {
	m := e.Msg
	r := NewReply(m, c.self, c.cluster, c.now())
	injectTrace(e.Context(), r)
	label := m.Command
	cmd, ok := c.commands.Lookup(m.Command)
	if !ok {
		label = "unknown"
		r.Error = fmt.Sprintf("unknown command %s; slipstream.help lists the commands of this instance", quote(m.Command))
		c.runs.WithLabelValues(label, "error").Inc()
		return r
	}
	args := m.Args
	if rawIsNull(args) {
		args = nil
	}
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	res, err := cmd.Run(cctx, args)
	if err == nil {
		r.Result, err = json.Marshal(res)
	}
	from := ""
	if e.From != nil {
		from = e.From.ID()
	}
	if err != nil {
		r.Error = err.Error()
		c.runs.WithLabelValues(label, "error").Inc()
		c.log.Warn("command failed", "command", m.Command, "messageId", m.MessageID, "link", from, "err", err)
		return r
	}
	c.runs.WithLabelValues(label, "ok").Inc()
	c.log.Info("command run", "command", m.Command, "messageId", m.MessageID, "link", from)
	return r
}
