package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/client"
	"github.com/slipstream-sync/slipstream/internal/envconfig"
)

const getUsage = `Usage: slipstream get KEY [-type GK|GA|GW] [-target tag,tag] [-all] [connection flags]

Reads KEY from the state of the instances (their state stage) and prints the value of
the first reply as JSON. -type GA reads an array (set by SA), GW a weighted set (SW);
GK reads any. -target asks only instances carrying one of the tags. -all waits for
-timeout and prints every reply, one line each: the answering instance, then the value,
"not found" or the error.

Exit status: 0 found, 3 not found, 1 no answer within -timeout (or a refusal, a reply
error, a connection failure), 2 a wrong command line.
`

func runGet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cf := newMsgFlagSet("get", getUsage, 5*time.Second, stderr)
	typ := fs.String("type", "GK", "GK (any value), GA (array) or GW (weighted set)")
	target := fs.String("target", "", "ask only instances with one of these tags (comma-separated)")
	all := fs.Bool("all", false, "wait for -timeout and print every reply")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return flagError(err)
	}
	if len(pos) != 1 {
		return cf.usage(fmt.Sprintf("get needs exactly one KEY (got %d arguments): slipstream get KEY [flags]", len(pos)))
	}
	t := slipstream.Type(strings.ToUpper(*typ))
	if !t.IsRequest() {
		return cf.usage(fmt.Sprintf("unknown -type %q: want GK (any value), GA (array) or GW (weighted set)", *typ))
	}
	if err := needTimeout(cf); err != nil {
		return err
	}
	m := &slipstream.Message{Type: t, Key: pos[0], TargetedTags: envconfig.SplitList(*target)}
	ctx, c, done, err := cf.session(ctx, client.Options{})
	if err != nil {
		return err
	}
	defer done()

	if *all {
		r, err := c.Request(ctx, m)
		if err != nil {
			return requestFailed(m, cf.timeout, err)
		}
		defer r.Close()
		st, err := printReplies(r, 0, cf.json, stdout)
		if err != nil {
			return requestFailed(m, cf.timeout, err)
		}
		switch {
		case st.found > 0:
			return nil
		case st.replies == 0:
			return requestFailed(m, cf.timeout, context.DeadlineExceeded)
		case st.errors < st.replies:
			return &exitCodeError{code: exitNotFound}
		}
		return &exitCodeError{code: exitError}
	}

	reply, err := c.First(ctx, m)
	if err != nil {
		return requestFailed(m, cf.timeout, err)
	}
	if cf.json {
		fmt.Fprintf(stdout, "%s\n", slipstream.Encode(reply))
	}
	switch {
	case reply.Error != "":
		return fmt.Errorf("%s answered: %s", reply.OriginInstanceID, reply.Error)
	case reply.Found == nil || !*reply.Found:
		fmt.Fprintf(stderr, "slipstream: key %q not found (answered by %s)\n", m.Key, reply.OriginInstanceID)
		return &exitCodeError{code: exitNotFound}
	}
	if !cf.json {
		fmt.Fprintln(stdout, oneLineJSON(reply.Value))
	}
	return nil
}
