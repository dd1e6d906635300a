package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/slipstream-sync/slipstream/client"
	"github.com/slipstream-sync/slipstream/internal/envconfig"
)

const subUsage = `Usage: slipstream sub [-id ID] [-tags a,b] [-n N] [-no-ack] [connection flags]

Connects as a client and prints every message routed to it, one JSON line each (the
frame as received), acknowledging each after printing it. With -id the link is durable:
messages for it wait in the instance while sub is not running, and arrive when it
connects again. Without -id it is anonymous and gets what arrives while it runs.
A count goes to stderr. Stops after -n messages, after -timeout (0: no limit), or on
Ctrl-C (SIGINT) or SIGTERM.

  -n N       stop after N messages
  -no-ack    do not acknowledge: the instance sends them again after its ack_timeout
             (and dead-letters them after max_attempts); for looking without consuming
  (sub always prints whole frames: -json changes nothing)

Exit status: 0 stopped as asked, 1 the connection failed or fewer than -n messages came
within -timeout, 2 a wrong command line.
`

// subSignals stop sub (a variable for tests).
var subSignals = []os.Signal{os.Interrupt, syscall.SIGTERM}

func runSub(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cf := newMsgFlagSet("sub", subUsage, 0, stderr)
	limit := fs.Int("n", 0, "stop after N messages")
	noAck := fs.Bool("no-ack", false, "do not acknowledge")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return flagError(err)
	}
	if len(pos) > 0 {
		return cf.usage(fmt.Sprintf("sub takes no arguments (got %q): name the link with -id", pos))
	}
	if *limit < 0 {
		return cf.usage("-n must not be negative")
	}
	ctx, stop := signal.NotifyContext(ctx, subSignals...)
	defer stop()
	ctx, cancel := cf.withTimeout(ctx)
	defer cancel()
	dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
	c, url, err := cf.dial(dctx, client.Options{}, stderr)
	dcancel()
	if err != nil {
		return err
	}
	defer c.Close()

	who := "an anonymous link"
	if cf.id != "" {
		who = fmt.Sprintf("link %q", cf.id)
		if tags := envconfig.SplitList(cf.tags); len(tags) > 0 {
			who += " (tags " + strings.Join(tags, ",") + ")"
		}
	}
	fmt.Fprintf(stderr, "subscribed to %s as %s; Ctrl-C stops\n", url, who)
	progress := msgIsTerminal(stderr)
	n := 0
	finish := func() {
		if progress {
			fmt.Fprint(stderr, "\r")
		}
		fmt.Fprintf(stderr, "received %d %s\n", n, plural(n, "message", "messages"))
	}
	for *limit == 0 || n < *limit {
		select {
		case d, ok := <-c.Deliveries():
			if !ok {
				finish()
				return fmt.Errorf("connection to %s lost: %v", url, c.Err())
			}
			if _, err := fmt.Fprintf(stdout, "%s\n", d.Raw); err != nil {
				return err
			}
			n++
			if !*noAck {
				if err := d.Ack(); err != nil {
					finish()
					return fmt.Errorf("acknowledging %s: %w", d.Msg.MessageID, err)
				}
			}
			if progress {
				fmt.Fprintf(stderr, "\rreceived %d", n)
			}
		case <-ctx.Done():
			finish()
			if *limit > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("received %d of the %d messages asked for within %s", n, *limit, cf.timeout)
			}
			return nil
		}
	}
	finish()
	return nil
}

// msgIsTerminal reports whether w is a terminal (progress may rewrite its line).
func msgIsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
