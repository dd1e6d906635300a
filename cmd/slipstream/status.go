package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/slipstream-sync/slipstream/internal/daemon"
)

// adminFlags declares -admin, -token and -c for the commands that talk to
// an instance's admin API (status, top, tap).
type adminFlags struct {
	admin, token, config *string
}

func newAdminFlags(fs *flag.FlagSet) adminFlags {
	return adminFlags{
		admin:  fs.String("admin", "", "the instance's admin API (default: admin.listen of -c, else 127.0.0.1:9090)"),
		token:  fs.String("token", os.Getenv("SLIPSTREAM_ADMIN_TOKEN"), "the admin token (default $SLIPSTREAM_ADMIN_TOKEN, else admin.token of -c)"),
		config: fs.String("c", "", "read the admin address and token from this config file"),
	}
}

// client resolves the flags: explicit -admin/-token first, then the config
// file's admin block, then the default address.
func (f adminFlags) client(stderr io.Writer) (*dlqClient, error) {
	admin, token := *f.admin, *f.token
	if *f.config != "" {
		cfg, err := loadConfig(*f.config, stderr)
		if err != nil {
			return nil, err
		}
		if admin == "" {
			admin = cfg.Admin.Listen
		}
		if token == "" {
			token = cfg.Admin.Token
		}
	}
	if admin == "" {
		admin = "127.0.0.1:9090"
	}
	return newDLQClient(admin, token), nil
}

const statusUsage = `Usage: slipstream status [-admin HOST:PORT] [-token T] [-c FILE] [-json]

Print an instance's status (GET /v1/status): the instance, its links with
their outbox depth, and each pipeline's stage counters.
`

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, statusUsage); fs.PrintDefaults() }
	af := newAdminFlags(fs)
	asJSON := fs.Bool("json", false, "print the JSON answer as is")
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("status takes no arguments (got %q)", fs.Args())}
	}
	c, err := af.client(stderr)
	if err != nil {
		return err
	}
	if *asJSON {
		var raw json.RawMessage
		if err := c.do(ctx, "GET", "/v1/status", nil, &raw); err != nil {
			return err
		}
		_, err := stdout.Write(raw)
		return err
	}
	var st daemon.Status
	if err := c.do(ctx, "GET", "/v1/status", nil, &st); err != nil {
		return err
	}
	printStatus(stdout, &st)
	return nil
}

func printStatus(w io.Writer, st *daemon.Status) {
	i := st.Instance
	fmt.Fprintf(w, "Instance %s (cluster group %s, tags %s), version %s, up %s\n\n", i.ID, i.ClusterGroup, listOrDash(i.Tags), i.Version,
		(time.Duration(i.UptimeSeconds) * time.Second).String())
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LINK\tKIND\tSTATE\tDURABLE\tPENDING\tOLDEST\tTAGS\tLAST ERROR")
	for _, l := range st.Links {
		oldest := "-"
		if l.Pending > 0 {
			oldest = age(time.Duration(l.OldestPendingSeconds * float64(time.Second)))
		}
		state := l.State
		if l.Dialer != "" && l.Dialer != l.State {
			state += " (" + l.Dialer + ")"
		}
		durable := fmt.Sprint(l.Durable)
		if l.Declared {
			durable = "declared"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", l.ID, l.Kind, state, durable, l.Pending, oldest, listOrDash(l.Tags), orDash(l.LastError))
	}
	if len(st.Links) == 0 {
		fmt.Fprintln(tw, "(no links)")
	}
	tw.Flush()
	for _, p := range st.Pipelines {
		fmt.Fprintf(w, "\nPipeline %s\n", p.Name)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "STAGE\tPROCESSED\tDROPPED\tERRORS")
		for _, s := range p.Stages {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", s.Stage, s.Processed, s.Dropped, s.Errors)
		}
		tw.Flush()
	}
}

func listOrDash(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
