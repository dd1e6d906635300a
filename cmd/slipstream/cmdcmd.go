package main

import (
	"context"
	"fmt"
	"io"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/client"
	"github.com/slipstream-sync/slipstream/internal/envconfig"
)

const cmdUsage = `Usage: slipstream cmd NAME [-args JSON] [-target tag,tag] [-n N] [connection flags]

Sends the command NAME (a CMD message) and prints each reply until -timeout, one line
each: the answering instance (or client), then its result as JSON or "error: ...".
Commands named slipstream.* are run by every instance they reach (slipstream.ping,
slipstream.stats, slipstream.set_log_level -args '{"level":"debug"}', slipstream.dlq.replay,
slipstream.dlq.purge, slipstream.help); they need allow_commands on the listener of
-url. Other commands are delivered to the clients whose tags match -target, and those
clients answer.

  -args JSON     the command's arguments, a JSON object
  -target tags   only instances or clients with one of these tags (comma-separated)
  -n N           stop after N replies (default: wait for -timeout)

Exit status: 0 when a reply carries a result, 1 when every reply is an error, none came
within -timeout, or the instance refused the command; 2 a wrong command line.
`

func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cf := newMsgFlagSet("cmd", cmdUsage, 5*time.Second, stderr)
	argsJSON := fs.String("args", "", "the command's arguments, a JSON object")
	target := fs.String("target", "", "only these tags (comma-separated)")
	limit := fs.Int("n", 0, "stop after N replies")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return flagError(err)
	}
	if len(pos) != 1 {
		return cf.usage(fmt.Sprintf("cmd needs exactly one command NAME (got %d arguments), e.g. slipstream cmd slipstream.ping", len(pos)))
	}
	a, err := cf.parseJSONFlag("args", *argsJSON, `pass an object, e.g. -args '{"level":"debug"}'`)
	if err != nil {
		return err
	}
	if *limit < 0 {
		return cf.usage("-n must not be negative")
	}
	if err := needTimeout(cf); err != nil {
		return err
	}
	m := &slipstream.Message{Type: slipstream.TypeCMD, Command: pos[0], Args: a, TargetedTags: envconfig.SplitList(*target)}
	ctx, c, done, err := cf.session(ctx, client.Options{})
	if err != nil {
		return err
	}
	defer done()
	r, err := c.Request(ctx, m)
	if err != nil {
		return requestFailed(m, cf.timeout, err)
	}
	defer r.Close()
	st, err := printReplies(r, *limit, cf.json, stdout)
	if err != nil {
		return requestFailed(m, cf.timeout, err)
	}
	switch {
	case st.replies == 0:
		return requestFailed(m, cf.timeout, context.DeadlineExceeded)
	case st.errors == st.replies:
		fmt.Fprintf(stderr, "slipstream: every reply to %q is an error\n", m.Command)
		return &exitCodeError{code: exitError}
	}
	return nil
}
