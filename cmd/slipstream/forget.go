package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"

	"github.com/slipstream-sync/slipstream/internal/daemon"
)

const forgetUsage = `Usage: slipstream forget-link [-admin HOST:PORT] [-token T] [-c FILE] -yes ID

Forget a durable link that is gone for good (a client id that will not come
back, a decommissioned peer): the instance stops keeping deliveries for it
and deletes those it holds (DELETE /v1/links/{id}). Until then every message
routed to it waits in its outbox, and past the outbox limits moves to the
dead letters. Its dead letters stay: purge them with slipstream dlq purge
-link ID. A link that is connected, or that the configuration declares (a
websocket_client peer block, a websocket_server inbound_peer), is refused.
slipstream status lists the links.
`

func runForgetLink(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("forget-link", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, forgetUsage); fs.PrintDefaults() }
	af := newAdminFlags(fs)
	yes := fs.Bool("yes", false, "confirm: the link's pending deliveries are deleted")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return flagError(err)
	}
	if len(pos) != 1 {
		return &usageError{fmt.Sprintf("forget-link takes one link id (got %d arguments; slipstream status lists the links)", len(pos))}
	}
	if !*yes {
		return &usageError{fmt.Sprintf("forget-link deletes the deliveries waiting for %q: add -yes to confirm", pos[0])}
	}
	c, err := af.client(stderr)
	if err != nil {
		return err
	}
	var out daemon.LinkForgotten
	if err := c.do(ctx, "DELETE", "/v1/links/"+url.PathEscape(pos[0]), nil, &out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "forgot link %s; %d pending deliveries deleted\n", out.Link, out.Dropped)
	return nil
}
