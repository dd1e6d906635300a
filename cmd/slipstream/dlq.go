package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

const dlqUsage = `Usage: slipstream dlq <command> [flags] [SEQ...]

Dead letters are deliveries an instance gave up on (no ACK after max_attempts,
refused by the receiver, or over an outbox limit). These commands use the
instance's admin API.

Commands:
  ls       list dead letters          slipstream dlq ls [-link ID] [-limit N] [-json]
  replay   send them again            slipstream dlq replay [-link ID] [SEQ...]
           (each goes back into its link's outbox under a new seq; no SEQ: all
           of -link, or of every link)
  purge    delete them                slipstream dlq purge [-link ID] [SEQ...] [-yes]
           (without SEQ every dead letter of -link, or of every link, is
           deleted: that needs -yes)

Flags of every command:
  -admin URL     the instance's admin API (default http://127.0.0.1:9090)
  -token TOKEN   the admin token (default $SLIPSTREAM_ADMIN_TOKEN)
  -link ID       only this link's dead letters (SEQ numbers are per link)
`

// dlqClient talks to an instance's admin API.
type dlqClient struct {
	base  string
	token string
	http  *http.Client
}

func runDLQ(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return &usageError{"dlq needs a command: ls, replay or purge (slipstream dlq -h)"}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "ls", "list":
		return runDLQList(ctx, rest, stdout, stderr)
	case "replay":
		return runDLQReplay(ctx, rest, stdout, stderr)
	case "purge":
		return runDLQPurge(ctx, rest, stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, dlqUsage)
		return nil
	}
	return &usageError{fmt.Sprintf("unknown dlq command %q: want ls, replay or purge (slipstream dlq -h)", cmd)}
}

// dlqFlags declares the flags every dlq command has.
func dlqFlags(name string, stderr io.Writer) (*flag.FlagSet, *string, *string, *string) {
	fs := flag.NewFlagSet("dlq "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, dlqUsage) }
	admin := fs.String("admin", "http://127.0.0.1:9090", "the instance's admin API")
	token := fs.String("token", os.Getenv("SLIPSTREAM_ADMIN_TOKEN"), "the admin token (default $SLIPSTREAM_ADMIN_TOKEN)")
	link := fs.String("link", "", "only this link's dead letters")
	return fs, admin, token, link
}

// flagError turns a flag parsing error into the command's result: -h
// (usage printed) is success, anything else a usage error (printed by the
// flag package).
func flagError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return &exitCodeError{code: exitUsage}
}

// parseInterleaved parses flags that may come before, between or after the
// positional arguments, and returns the positional ones.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func newDLQClient(admin, token string) *dlqClient {
	base := strings.TrimRight(admin, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	// One request per run: no idle connections to keep.
	tr := &http.Transport{Proxy: http.ProxyFromEnvironment, DisableKeepAlives: true}
	return &dlqClient{base: base, token: token, http: &http.Client{Timeout: time.Minute, Transport: tr}}
}

// do sends a request to the admin API and decodes a 2xx JSON answer into
// out; other answers become errors that say what to do.
func (c *dlqClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return fmt.Errorf("bad -admin %q: %w", c.base, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("cannot reach the admin API at %s: is the instance running? set -admin (%v)", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the answer of the admin API at %s: %w", c.base, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(b))
		answered := json.Unmarshal(b, &e) == nil && e.Error != "" // by a route, not the mux's 404
		if answered {
			msg = e.Error
		}
		switch {
		case resp.StatusCode == http.StatusUnauthorized && c.token == "":
			return fmt.Errorf("the admin API at %s wants the admin token: pass -token or set SLIPSTREAM_ADMIN_TOKEN", c.base)
		case resp.StatusCode == http.StatusUnauthorized:
			return fmt.Errorf("the admin API at %s refused the token (check -token or SLIPSTREAM_ADMIN_TOKEN)", c.base)
		case resp.StatusCode == http.StatusNotFound && !answered:
			return fmt.Errorf("the admin API at %s has no %s %s (%s): is -admin the admin listener (admin.listen), and is the instance recent enough?",
				c.base, method, path, resp.Status)
		}
		return fmt.Errorf("%s (%s)", msg, resp.Status)
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = b
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("the admin API at %s answered something that is not the expected JSON: %w", c.base, err)
	}
	return nil
}

// deadLetter is an entry of GET /v1/dlq.
type deadLetter struct {
	Link     string          `json:"link"`
	Seq      uint64          `json:"seq"`
	Reason   string          `json:"reason"`
	Attempts int             `json:"attempts"`
	At       time.Time       `json:"at"`
	Message  json.RawMessage `json:"message"`
}

func runDLQList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, admin, token, link := dlqFlags("ls", stderr)
	limit := fs.Int("limit", 100, "list at most N dead letters (the API allows up to 10000)")
	asJSON := fs.Bool("json", false, "print the API's JSON answer instead of a table")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return flagError(err)
	}
	if len(pos) > 0 {
		return &usageError{fmt.Sprintf("dlq ls takes no arguments (got %q); choose the link with -link", pos)}
	}
	if *limit < 1 {
		return &usageError{"-limit must be 1 or more"}
	}
	q := url.Values{"limit": {strconv.Itoa(*limit)}}
	if *link != "" {
		q.Set("link", *link)
	}
	c := newDLQClient(*admin, *token)
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodGet, "/v1/dlq?"+q.Encode(), nil, &raw); err != nil {
		return err
	}
	if *asJSON {
		var buf bytes.Buffer
		if err := json.Indent(&buf, raw, "", "  "); err != nil {
			return fmt.Errorf("the admin API answered invalid JSON: %w", err)
		}
		buf.WriteByte('\n')
		_, err := stdout.Write(buf.Bytes())
		return err
	}
	var res struct {
		DeadLetters []deadLetter `json:"deadLetters"`
		More        bool         `json:"more"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return fmt.Errorf("the admin API at %s answered something that is not a dead-letter list: %w", c.base, err)
	}
	printDeadLetters(stdout, res.DeadLetters, time.Now())
	if res.More {
		fmt.Fprintf(stdout, "(the first %d; there are more: raise -limit, or narrow with -link)\n", len(res.DeadLetters))
	}
	return nil
}

// printDeadLetters prints a table, the free-text reason last.
func printDeadLetters(w io.Writer, ds []deadLetter, now time.Time) {
	if len(ds) == 0 {
		fmt.Fprintln(w, "no dead letters")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LINK\tSEQ\tATTEMPTS\tAGE\tTYPE\tMESSAGE-ID\tREASON")
	for _, d := range ds {
		var m struct {
			Type      string `json:"type"`
			MessageID string `json:"messageId"`
		}
		if d.Message == nil || json.Unmarshal(d.Message, &m) != nil {
			m.Type, m.MessageID = "?", "(not JSON)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\n", d.Link, d.Seq, d.Attempts, age(now.Sub(d.At)), m.Type, m.MessageID, d.Reason)
	}
	_ = tw.Flush()
}

// age renders a duration the way an operator reads it: 45s, 12m, 5h, 3d.
func age(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", max(int(d.Seconds()), 0))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// selection reads SEQ arguments for -link.
func selection(cmd, link string, pos []string) (map[string]any, error) {
	sel := map[string]any{"link": link}
	if len(pos) == 0 {
		return sel, nil
	}
	if link == "" {
		return nil, &usageError{fmt.Sprintf("dlq %s SEQ... needs -link: seqs are numbered per link", cmd)}
	}
	seqs := make([]uint64, 0, len(pos))
	for _, p := range pos {
		seq, err := strconv.ParseUint(p, 10, 64)
		if err != nil || seq == 0 {
			return nil, &usageError{fmt.Sprintf("dlq %s: %q is not a seq (a whole number from dlq ls)", cmd, p)}
		}
		seqs = append(seqs, seq)
	}
	sel["seqs"] = seqs
	return sel, nil
}

func runDLQReplay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, admin, token, link := dlqFlags("replay", stderr)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return flagError(err)
	}
	sel, err := selection("replay", *link, pos)
	if err != nil {
		return err
	}
	var res struct {
		Replayed int `json:"replayed"`
	}
	if err := newDLQClient(*admin, *token).do(ctx, http.MethodPost, "/v1/dlq/replay", sel, &res); err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	fmt.Fprintf(stdout, "replayed %d dead %s\n", res.Replayed, plural(res.Replayed, "letter", "letters"))
	return nil
}

func runDLQPurge(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, admin, token, link := dlqFlags("purge", stderr)
	yes := fs.Bool("yes", false, "confirm purging every dead letter (of -link, or of every link)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return flagError(err)
	}
	sel, err := selection("purge", *link, pos)
	if err != nil {
		return err
	}
	if len(pos) == 0 && !*yes {
		what := "every dead letter of every link"
		if *link != "" {
			what = fmt.Sprintf("every dead letter of link %q", *link)
		}
		fmt.Fprintf(stderr, "slipstream: dlq purge without SEQ deletes %s, for good; pass -yes to confirm\n", what)
		return &exitCodeError{code: exitUsage}
	}
	var res struct {
		Purged int `json:"purged"`
	}
	if err := newDLQClient(*admin, *token).do(ctx, http.MethodPost, "/v1/dlq/purge", sel, &res); err != nil {
		return fmt.Errorf("purge: %w", err)
	}
	fmt.Fprintf(stdout, "purged %d dead %s\n", res.Purged, plural(res.Purged, "letter", "letters"))
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
