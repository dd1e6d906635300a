package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/slipstream-sync/slipstream/internal/daemon"
)

const tapUsage = `Usage: slipstream tap -stage NAME [-pipeline P] [-json] [-n COUNT] [-admin HOST:PORT] [-token T] [-c FILE]

Print a line for each message leaving stage NAME (in every pipeline that has
it, or in P) as it happens, from the instance's GET /v1/tap. The instance
never waits for tap: when it is too slow, messages are skipped and a line
says how many. -n stops after COUNT messages; otherwise stop it with Ctrl-C.
`

func runTap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tap", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, tapUsage); fs.PrintDefaults() }
	af := newAdminFlags(fs)
	stage := fs.String("stage", "", "the stage to watch (required)")
	pipe := fs.String("pipeline", "", "only this pipeline")
	asJSON := fs.Bool("json", false, "print the JSON lines as received")
	count := fs.Int("n", 0, "exit after this many messages (0: run until interrupted)")
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	switch {
	case fs.NArg() > 0:
		return &usageError{fmt.Sprintf("tap takes no arguments (got %q); name the stage with -stage", fs.Args())}
	case *stage == "":
		return &usageError{"tap needs -stage NAME (a stage kind of the pipeline: decode, dedup, persist, ...)"}
	case *count < 0:
		return &usageError{"-n must be 0 or more"}
	}
	c, err := af.client(stderr)
	if err != nil {
		return err
	}
	q := url.Values{"stage": {*stage}}
	if *pipe != "" {
		q.Set("pipeline", *pipe)
	}
	path := "/v1/tap?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+path, nil)
	if err != nil {
		return fmt.Errorf("bad -admin %q: %w", c.base, err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	// A stream: no overall timeout.
	resp, err := (&http.Client{Transport: c.http.Transport}).Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		// Let the shared client word the error (same request, short answer).
		return c.do(ctx, "GET", path, nil, nil)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if resp.StatusCode == http.StatusNotFound && json.Unmarshal(b, &e) == nil && strings.HasPrefix(e.Error, "no stage") {
			return fmt.Errorf("%s: pass one of them with -stage (and -pipeline)", e.Error)
		}
		return c.do(ctx, "GET", path, nil, nil) // words the other errors (401 token, ...)
	}
	fmt.Fprintf(stderr, "tapping stage %s of %s; Ctrl-C to stop\n", *stage, orAll(*pipe))
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	n := 0
	for sc.Scan() {
		line := sc.Bytes()
		var ev daemon.TapEvent
		if err := json.Unmarshal(line, &ev); err != nil {
			return fmt.Errorf("the tap stream sent something that is not JSON: %q", line)
		}
		switch {
		case ev.Dropped > 0:
			fmt.Fprintf(stderr, "(%d message(s) skipped: tap was too slow)\n", ev.Dropped)
			continue
		case *asJSON:
			fmt.Fprintf(stdout, "%s\n", line)
		default:
			printTapEvent(stdout, &ev)
		}
		if n++; *count > 0 && n >= *count {
			return nil
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("the tap stream broke: %w", err)
	}
	if ctx.Err() == nil {
		fmt.Fprintln(stderr, "the instance ended the tap stream (it is stopping)")
	}
	return nil
}

func orAll(p string) string {
	if p == "" {
		return "every pipeline"
	}
	return "pipeline " + p
}

func printTapEvent(w io.Writer, ev *daemon.TapEvent) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s/%s %s", ev.Time, ev.Pipeline, ev.Stage, orDash(ev.Type))
	if ev.MessageID != "" {
		fmt.Fprintf(&b, " id=%s", ev.MessageID)
	}
	if ev.Key != "" {
		fmt.Fprintf(&b, " key=%s", ev.Key)
	}
	fmt.Fprintf(&b, " from=%s status=%s", orDash(ev.Link), ev.Status)
	if len(ev.Recipients) > 0 {
		fmt.Fprintf(&b, " to=%s", strings.Join(ev.Recipients, ","))
	}
	if len(ev.Value) > 0 {
		v := string(ev.Value)
		if len(v) > 80 {
			v = v[:77] + "..."
		}
		fmt.Fprintf(&b, " value=%s", v)
	}
	fmt.Fprintln(w, b.String())
}
