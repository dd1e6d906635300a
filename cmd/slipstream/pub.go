package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/client"
	"github.com/slipstream-sync/slipstream/internal/envconfig"
)

const pubUsage = `Usage: slipstream pub [-type T] [-key K] [-value JSON] [-target tags] [connection flags]
       slipstream pub -command NAME [-args JSON] [-target tags] [connection flags]
       slipstream pub -raw FRAME|- [connection flags]

Sends one message and prints the instance's answer: the ACK of a data message (SK SA SW
CMD: stored, it will reach every recipient) or the ERR that refused it; for a get (GK GA
GW) or a command, every reply until -timeout.

  -type T          SK (default), SA, SW, GK, GA, GW or CMD (the default with -command)
  -key K           the key of SK SA SW GK GA GW
  -value JSON      the value: any JSON for SK (null deletes), an array for SA, an object
                   of weights for SW. Quote strings: -value '"paid"'
  -target tags     targetedTags, comma-separated: only links with one of these tags
  -command NAME    a CMD's command; -args JSON its arguments (an object)
  -message-id ID   the messageId (default: a new one); send twice to see dedup at work
  -raw FRAME       send FRAME exactly as given, even invalid JSON, and print every ACK, ERR,
                   HELLO or reply frame that answers it. -raw - sends each line of stdin,
                   one after the other (each waits for its answer)

Exit status: 0 accepted, 1 refused with ERR (or no connection), 2 a wrong command line.
`

// pubStdin is where pub -raw - reads frames (a variable for tests).
var pubStdin io.Reader = os.Stdin

func runPub(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cf := newMsgFlagSet("pub", pubUsage, 5*time.Second, stderr)
	typ := fs.String("type", "", "SK, SA, SW, GK, GA, GW or CMD")
	key := fs.String("key", "", "the key")
	value := fs.String("value", "", "the value, JSON")
	target := fs.String("target", "", "targetedTags, comma-separated")
	command := fs.String("command", "", "a CMD's command name")
	argsJSON := fs.String("args", "", "a CMD's arguments, a JSON object")
	msgID := fs.String("message-id", "", "the messageId (default: a new one)")
	raw := fs.String("raw", "", "a frame to send as it is; - reads one frame per line from stdin")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return flagError(err)
	}
	if len(pos) > 0 {
		return cf.usage(fmt.Sprintf("pub takes no arguments (got %q): give the message with -type, -key, -value ... or -raw", pos))
	}
	if err := needTimeout(cf); err != nil {
		return err
	}
	if *raw != "" {
		var others []string
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "type", "key", "value", "target", "command", "args", "message-id":
				others = append(others, "-"+f.Name)
			}
		})
		if len(others) > 0 {
			return cf.usage(fmt.Sprintf("-raw sends the frame as it is: drop %s (or drop -raw)", strings.Join(others, " ")))
		}
		return pubRaw(ctx, cf, *raw, stdout, stderr)
	}

	t := slipstream.Type(strings.ToUpper(*typ))
	switch {
	case t == "" && *command != "":
		t = slipstream.TypeCMD
	case t == "":
		t = slipstream.TypeSK
	case !t.IsData() && !t.IsRequest():
		return cf.usage(fmt.Sprintf("unknown -type %q: want SK, SA, SW, GK, GA, GW or CMD (send other frames with -raw)", *typ))
	}
	if (*command != "" || *argsJSON != "") && t != slipstream.TypeCMD {
		return cf.usage(fmt.Sprintf("-command and -args belong to CMD messages, not %s: drop -type", t))
	}
	m := &slipstream.Message{Type: t, Key: *key, Command: *command, MessageID: *msgID, TargetedTags: envconfig.SplitList(*target)}
	if m.Value, err = cf.parseJSONFlag("value", *value, `quote a string (-value '"paid"'), or give an array, object, number, true, false or null`); err != nil {
		return err
	}
	if m.Args, err = cf.parseJSONFlag("args", *argsJSON, `pass an object, e.g. -args '{"level":"debug"}'`); err != nil {
		return err
	}

	ctx, c, done, err := cf.session(ctx, client.Options{})
	if err != nil {
		return err
	}
	defer done()

	if t != slipstream.TypeCMD && t.IsData() {
		ack, err := c.Publish(ctx, m)
		if err != nil {
			return pubRefused(m, cf, err, stdout)
		}
		printAck(ack, cf.json, stdout)
		return nil
	}
	r, err := c.Request(ctx, m)
	if err != nil {
		return pubRefused(m, cf, err, stdout)
	}
	defer r.Close()
	if ack := r.Ack(); ack != nil {
		printAck(ack, cf.json, stdout)
	}
	st, err := printReplies(r, 0, cf.json, stdout)
	if err != nil {
		return pubRefused(m, cf, err, stdout)
	}
	fmt.Fprintf(stderr, "%d %s within %s\n", st.replies, plural(st.replies, "reply", "replies"), cf.timeout)
	return nil
}

// printAck prints the ACK of a data message.
func printAck(ack *slipstream.Message, asJSON bool, stdout io.Writer) {
	if asJSON {
		fmt.Fprintf(stdout, "%s\n", slipstream.Encode(ack))
		return
	}
	fmt.Fprintf(stdout, "ACK %s (stored by %s)\n", ack.MessageID, ack.OriginInstanceID)
}

// pubRefused reports an ERR (also as a frame with -json) or another failure.
func pubRefused(m *slipstream.Message, cf *connFlags, err error, stdout io.Writer) error {
	var refused *slipstream.Error
	if !errors.As(err, &refused) {
		if m.Type.IsData() && m.Type != slipstream.TypeCMD && errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("no ACK for %s %q within %s: the instance may be overloaded; raise -timeout (publishing again with -message-id %s is safe)", m.Type, m.Key, cf.timeout, m.MessageID)
		}
		return requestFailed(m, cf.timeout, err)
	}
	if cf.json {
		fmt.Fprintf(stdout, "%s\n", slipstream.Encode(refused.Frame()))
		return &exitCodeError{code: exitError}
	}
	return fmt.Errorf("the instance answered ERR %s: %s", refused.Code, refused.Text)
}

// pubRaw sends frames as they are, one at a time, and prints what answers
// each: ACK, ERR, HELLO and replies, as JSON lines.
func pubRaw(ctx context.Context, cf *connFlags, raw string, stdout, stderr io.Writer) error {
	answers := make(chan []byte, 1024)
	observe := func(m *slipstream.Message, frame []byte) {
		if m.Type == slipstream.TypeACK || m.Type == slipstream.TypeERR || m.Type == slipstream.TypeHELLO || m.IsReply() {
			select {
			case answers <- append([]byte(nil), frame...):
			default: // nobody keeps up: drop
			}
		}
	}
	dctx, cancel := cf.withTimeout(ctx)
	c, err := cf.dialAnswering(dctx, client.Options{Observe: observe}, stderr)
	cancel()
	if err != nil {
		return err
	}
	defer c.Close()
	if cf.id != "" {
		<-answers // the instance's HELLO answering ours
	}

	var sent, refused int
	sendOne := func(frame string) error {
		if err := c.SendRaw([]byte(frame), false); err != nil {
			return fmt.Errorf("sending frame %d: %w", sent+1, err)
		}
		sent++
		var probe struct {
			Type      slipstream.Type `json:"type"`
			InReplyTo string          `json:"inReplyTo"`
		}
		_ = json.Unmarshal([]byte(frame), &probe)
		// A get or a command may be answered by several replies: wait for
		// -timeout. Anything else has one answer at most.
		request := probe.InReplyTo == "" && (probe.Type.IsRequest() || probe.Type == slipstream.TypeCMD)
		timer := time.NewTimer(cf.timeout)
		defer timer.Stop()
		answered := false
		for {
			select {
			case a := <-answers:
				fmt.Fprintf(stdout, "%s\n", a)
				answered = true
				var m struct {
					Type slipstream.Type `json:"type"`
				}
				_ = json.Unmarshal(a, &m)
				if m.Type == slipstream.TypeERR {
					refused++
					return nil
				}
				if !request && m.Type != "" && !strings.Contains(string(a), `"inReplyTo"`) {
					return nil
				}
			case <-timer.C:
				if !answered {
					fmt.Fprintf(stderr, "slipstream: no answer to frame %d within %s (ACK, HELLO and reply frames get none)\n", sent, cf.timeout)
				}
				return nil
			case <-c.Done():
				return fmt.Errorf("the instance closed the connection after frame %d: %v", sent, c.Err())
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}

	if raw != "-" {
		err = sendOne(raw)
	} else {
		sc := bufio.NewScanner(pubStdin)
		sc.Buffer(make([]byte, 64<<10), 64<<20)
		for err == nil && sc.Scan() {
			if line := strings.TrimSpace(sc.Text()); line != "" {
				err = sendOne(line)
			}
		}
		if err == nil {
			if err = sc.Err(); err != nil {
				err = fmt.Errorf("reading frames from stdin: %w", err)
			}
		}
	}
	if err != nil {
		return err
	}
	if refused > 0 {
		fmt.Fprintf(stderr, "slipstream: %d of %d %s answered with ERR\n", refused, sent, plural(sent, "frame", "frames"))
		return &exitCodeError{code: exitError}
	}
	return nil
}
