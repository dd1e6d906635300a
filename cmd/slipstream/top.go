package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/slipstream-sync/slipstream/internal/daemon"
)

const topUsage = `Usage: slipstream top [-admin HOST:PORT] [-token T] [-c FILE] [-interval 1s] [-once]

Live rates of an instance, from /v1/status sampled every -interval: messages
per second through each stage (and drops and errors), and each link's state
and outbox depth. -once prints one snapshot (two samples -interval apart)
and exits. Stop it with Ctrl-C.
`

func runTop(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("top", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, topUsage); fs.PrintDefaults() }
	af := newAdminFlags(fs)
	interval := fs.Duration("interval", time.Second, "time between samples")
	once := fs.Bool("once", false, "print one snapshot and exit")
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("top takes no arguments (got %q)", fs.Args())}
	}
	if *interval < 10*time.Millisecond {
		return &usageError{fmt.Sprintf("-interval %s is too short: use 10ms or more", *interval)}
	}
	c, err := af.client(stderr)
	if err != nil {
		return err
	}
	sample := func() (*daemon.Status, time.Time, error) {
		var st daemon.Status
		err := c.do(ctx, "GET", "/v1/status", nil, &st)
		return &st, time.Now(), err
	}
	prev, at, err := sample()
	if err != nil {
		return err
	}
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		cur, now, err := sample()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if !*once {
			fmt.Fprint(stdout, "\033[H\033[2J") // clear the terminal
		}
		printTop(stdout, prev, cur, now.Sub(at))
		if *once {
			return nil
		}
		prev, at = cur, now
	}
}

// printTop prints per-stage and per-link rates between two samples.
func printTop(w io.Writer, prev, cur *daemon.Status, dt time.Duration) {
	sec := dt.Seconds()
	fmt.Fprintf(w, "%s  instance %s  up %s  (rates over %s)\n\n", time.Now().Format("15:04:05"), cur.Instance.ID,
		(time.Duration(cur.Instance.UptimeSeconds) * time.Second).String(), dt.Round(time.Millisecond))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PIPELINE\tSTAGE\tMSG/S\tDROP/S\tERR/S\tPROCESSED\t")
	for _, p := range cur.Pipelines {
		var before map[string][3]uint64
		for _, q := range prev.Pipelines {
			if q.Name == p.Name {
				before = map[string][3]uint64{}
				for _, s := range q.Stages {
					before[s.Stage] = [3]uint64{s.Processed, s.Dropped, s.Errors}
				}
			}
		}
		for _, s := range p.Stages {
			b := before[s.Stage]
			fmt.Fprintf(tw, "%s\t%s\t%.1f\t%.1f\t%.1f\t%d\t\n", p.Name, s.Stage,
				rate(s.Processed, b[0], sec), rate(s.Dropped, b[1], sec), rate(s.Errors, b[2], sec), s.Processed)
		}
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "LINK\tKIND\tSTATE\tPENDING\tPENDING Δ/S\t")
	pending := map[string]int64{}
	for _, l := range prev.Links {
		pending[l.ID] = l.Pending
	}
	for _, l := range cur.Links {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%+.1f\t\n", l.ID, l.Kind, l.State, l.Pending, float64(l.Pending-pending[l.ID])/sec)
	}
	if len(cur.Links) == 0 {
		fmt.Fprintln(tw, "(no links)\t\t\t\t\t")
	}
	tw.Flush()
}

func rate(cur, prev uint64, sec float64) float64 {
	if cur < prev || sec <= 0 { // the instance restarted
		return 0
	}
	return float64(cur-prev) / sec
}
