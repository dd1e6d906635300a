package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/client"
	"github.com/slipstream-sync/slipstream/internal/envconfig"
	"github.com/slipstream-sync/slipstream/sources"
)

// The flags shared by get, pub, sub and cmd: where the instance is and who
// this command line client is.

const (
	defaultWSURL = "ws://127.0.0.1:7070/ws"
	// exitNotFound is get's exit code when every answer says "not found".
	exitNotFound = 3
)

const connFlagsUsage = `Connection flags (get, pub, sub, cmd):
  -url URL        the instance's WebSocket endpoint (default: the first websocket_server
                  of -config, else of ./pipelines.hcl when present, else ` + defaultWSURL + `)
  -config FILE    derive -url from this config (also -c)
  -token TOKEN    bearer token for a listener with tokens (default $SLIPSTREAM_TOKEN)
  -ca FILE        PEM CA(s) that signed a wss:// instance's certificate (default: the system's)
  -cert FILE      client certificate, for a listener with mutual TLS (with -cert-key)
  -cert-key FILE  the private key of -cert
  -id ID          link id announced in HELLO (default: an anonymous, ephemeral link)
  -tags a,b       tags announced in HELLO (needs -id)
  -timeout D      how long to wait for answers (get, pub, cmd: default 5s; sub: 0 = no limit)
  -json           print the frames as JSON lines instead of text
`

// connFlags are the connection flags of one command.
type connFlags struct {
	name                         string // the command: get, pub, sub, cmd
	stderr                       io.Writer
	url, config, token, id, tags string
	ca, cert, key                string
	timeout                      time.Duration
	json                         bool
}

// newMsgFlagSet makes the flag set of a messaging command with the
// connection flags; usage is printed for -h.
func newMsgFlagSet(name, usage string, timeout time.Duration, stderr io.Writer) (*flag.FlagSet, *connFlags) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage+"\n"+connFlagsUsage) }
	f := &connFlags{name: name, stderr: stderr}
	fs.StringVar(&f.url, "url", "", "the instance's WebSocket endpoint")
	fs.StringVar(&f.config, "config", "", "derive -url from this config file")
	fs.StringVar(&f.config, "c", "", "derive -url from this config file")
	fs.StringVar(&f.token, "token", os.Getenv("SLIPSTREAM_TOKEN"), "bearer token (default $SLIPSTREAM_TOKEN)")
	fs.StringVar(&f.ca, "ca", "", "PEM CA file for wss://")
	fs.StringVar(&f.cert, "cert", "", "PEM client certificate for mutual TLS (with -cert-key)")
	fs.StringVar(&f.key, "cert-key", "", "PEM private key of -cert")
	fs.StringVar(&f.id, "id", "", "link id announced in HELLO")
	fs.StringVar(&f.tags, "tags", "", "tags announced in HELLO, comma-separated (needs -id)")
	fs.DurationVar(&f.timeout, "timeout", timeout, "how long to wait for answers")
	fs.BoolVar(&f.json, "json", false, "print frames as JSON lines")
	return fs, f
}

// usage reports a mistake on the command line and points at the
// command's help (exit status 2).
func (f *connFlags) usage(msg string) error {
	fmt.Fprintf(f.stderr, "slipstream: %s\nRun 'slipstream %s -h' for its flags.\n", msg, f.name)
	return &exitCodeError{code: exitUsage}
}

// endpoint returns the URL to dial: -url, or derived from a config.
func (f *connFlags) endpoint(stderr io.Writer) (string, error) {
	if f.url != "" {
		if !strings.HasPrefix(f.url, "ws://") && !strings.HasPrefix(f.url, "wss://") {
			return "", f.usage(fmt.Sprintf("-url %q must start with ws:// or wss://, e.g. %s", f.url, defaultWSURL))
		}
		return f.url, nil
	}
	path := f.config
	if path == "" {
		if _, err := os.Stat("pipelines.hcl"); err != nil {
			return defaultWSURL, nil
		}
		path = "pipelines.hcl"
	}
	cfg, err := loadConfig(path, stderr)
	if err != nil {
		return "", err
	}
	for _, c := range cfg.Sources {
		sc, ok := c.Config.(*sources.ServerConfig)
		if !ok {
			continue
		}
		return listenURL(sc.Listen, sc.Path, sc.TLS != nil, path)
	}
	return "", fmt.Errorf("%s has no websocket_server source to connect to: pass -url", path)
}

// listenURL turns a listen address into the URL a local client dials.
func listenURL(listen, path string, tls bool, file string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("%s: websocket_server listen %q is not host:port: pass -url", file, listen)
	}
	if port == "0" {
		return "", fmt.Errorf("%s: websocket_server listens on port 0 (a free port picked at start): pass -url", file)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	scheme := "ws://"
	if tls {
		scheme = "wss://"
	}
	return scheme + net.JoinHostPort(host, port) + path, nil
}

// tlsConfig is the client side of TLS from -ca, -cert and -key; nil when
// none is set (the system's roots).
func (f *connFlags) tlsConfig() (*tls.Config, error) {
	if f.ca == "" && f.cert == "" && f.key == "" {
		return nil, nil
	}
	if (f.cert == "") != (f.key == "") {
		return nil, f.usage("-cert and -cert-key go together: the client certificate and its private key")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.ca != "" {
		pem, err := os.ReadFile(f.ca)
		if err != nil {
			return nil, fmt.Errorf("read -ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-ca %s holds no PEM certificate", f.ca)
		}
	}
	if f.cert != "" {
		pair, err := tls.LoadX509KeyPair(f.cert, f.key)
		if err != nil {
			return nil, fmt.Errorf("load -cert and -cert-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// check validates the flags every command shares.
func (f *connFlags) check() error {
	if f.tags != "" && f.id == "" {
		return f.usage("-tags needs -id: tags are announced in HELLO with the link id")
	}
	if f.timeout < 0 {
		return f.usage("-timeout must not be negative")
	}
	return nil
}

// dial connects as the flags say. ctx bounds the dial and the handshake.
func (f *connFlags) dial(ctx context.Context, o client.Options, stderr io.Writer) (*client.Client, string, error) {
	if err := f.check(); err != nil {
		return nil, "", err
	}
	url, err := f.endpoint(stderr)
	if err != nil {
		return nil, "", err
	}
	tc, err := f.tlsConfig()
	if err != nil {
		return nil, "", err
	}
	if tc != nil {
		d := *websocket.DefaultDialer
		d.TLSClientConfig = tc
		o.Dialer = &d
	}
	o.ID, o.Tags = f.id, envconfig.SplitList(f.tags)
	if f.token != "" {
		o.Header = http.Header{"Authorization": {"Bearer " + f.token}}
	}
	c, err := client.Dial(ctx, url, o)
	if err == nil {
		return c, url, nil
	}
	var de *client.DialError
	var refused *slipstream.Error
	switch {
	case errors.As(err, &de) && de.StatusCode == http.StatusUnauthorized && f.token == "":
		return nil, "", fmt.Errorf("the instance at %s wants a token: pass -token or set SLIPSTREAM_TOKEN", url)
	case errors.As(err, &de) && de.StatusCode == http.StatusUnauthorized:
		return nil, "", fmt.Errorf("the instance at %s refused the token (check -token or SLIPSTREAM_TOKEN)", url)
	case errors.As(err, &de) && de.StatusCode != 0:
		return nil, "", fmt.Errorf("%s answered HTTP %s: is -url the websocket_server's address and path?", url, de.Status)
	case errors.As(err, &de) && strings.Contains(de.Err.Error(), "certificate"):
		return nil, "", fmt.Errorf("TLS with %s failed: %v: pass -ca with the CA that signed the instance's certificate, and -cert/-cert-key if it asks for a client certificate", url, de.Err)
	case errors.As(err, &de):
		return nil, "", fmt.Errorf("cannot connect to %s: %v: is the instance running? set -url (or -config)", url, de.Err)
	case errors.As(err, &refused):
		return nil, "", fmt.Errorf("the instance at %s refused the HELLO of -id %q: %s (%s)", url, f.id, refused.Text, refused.Code)
	}
	return nil, "", fmt.Errorf("connecting to %s: %w", url, err)
}

// dialAnswering dials for a command that sends and waits for answers
// (get, pub, cmd): data routed to the link meanwhile is acknowledged and
// dropped. ctx bounds the dial.
func (f *connFlags) dialAnswering(ctx context.Context, o client.Options, stderr io.Writer) (*client.Client, error) {
	o.AutoAck = true
	c, _, err := f.dial(ctx, o, stderr)
	if err != nil {
		return nil, err
	}
	go func() {
		for range c.Deliveries() { // ends when the client is closed
		}
	}()
	return c, nil
}

// session bounds ctx by -timeout and dials as dialAnswering does; done
// closes the client and releases ctx.
func (f *connFlags) session(ctx context.Context, o client.Options) (context.Context, *client.Client, func(), error) {
	ctx, cancel := f.withTimeout(ctx)
	c, err := f.dialAnswering(ctx, o, f.stderr)
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	return ctx, c, func() { c.Close(); cancel() }, nil
}

// withTimeout bounds ctx by -timeout (0: no bound).
func (f *connFlags) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if f.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, f.timeout)
}

// parseJSONFlag checks that a flag's value is JSON.
func (f *connFlags) parseJSONFlag(name, v, example string) (json.RawMessage, error) {
	if v == "" {
		return nil, nil
	}
	if !json.Valid([]byte(v)) {
		var x any
		err := json.Unmarshal([]byte(v), &x)
		return nil, f.usage(fmt.Sprintf("-%s is not JSON (%v): %s", name, err, example))
	}
	return json.RawMessage(v), nil
}

// replyLine renders a reply for people: the answering instance, then the
// value, the result, "not found" or the error.
func replyLine(m *slipstream.Message) string {
	who := m.OriginInstanceID
	if who == "" {
		who = "?"
	}
	switch {
	case m.Error != "":
		return who + "  error: " + m.Error
	case m.Type == slipstream.TypeCMD:
		if m.Result == nil {
			return who + "  null"
		}
		return who + "  " + oneLineJSON(m.Result)
	case m.Found == nil || !*m.Found:
		return who + "  not found"
	}
	return who + "  " + oneLineJSON(m.Value)
}

// oneLineJSON prints raw JSON on one line.
func oneLineJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return string(raw)
	}
	return b.String()
}

// replyStats counts the replies printReplies printed.
type replyStats struct {
	replies, found, errors int
}

// printReplies prints every reply of r (one line each: replyLine, or the
// frame with -json) until the request's context is done or, when limit > 0,
// limit replies came. The end of -timeout is the normal end; other ends
// (the instance's refusal, a lost connection) are returned.
func printReplies(r *client.Replies, limit int, asJSON bool, stdout io.Writer) (replyStats, error) {
	var st replyStats
	for limit <= 0 || st.replies < limit {
		m, err := r.Next()
		if errors.Is(err, context.DeadlineExceeded) {
			return st, nil
		}
		if err != nil {
			return st, err
		}
		st.replies++
		switch {
		case m.Error != "":
			st.errors++
		case m.Found != nil && *m.Found:
			st.found++
		}
		if asJSON {
			fmt.Fprintf(stdout, "%s\n", slipstream.Encode(m))
		} else {
			fmt.Fprintln(stdout, replyLine(m))
		}
	}
	return st, nil
}

// requestFailed explains why a request got no answer, saying what to do.
func requestFailed(m *slipstream.Message, timeout time.Duration, err error) error {
	what := fmt.Sprintf("%s %q", m.Type, m.Key)
	if m.Type == slipstream.TypeCMD {
		what = fmt.Sprintf("command %q", m.Command)
	}
	var refused *slipstream.Error
	var ce *client.ConnError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		who := "no instance with a state stage"
		if m.Type == slipstream.TypeCMD && strings.HasPrefix(m.Command, "slipstream.") {
			who = "no instance with a command stage"
		} else if m.Type == slipstream.TypeCMD {
			who = "no client that received it"
		}
		if len(m.TargetedTags) > 0 {
			who += fmt.Sprintf(" and tags matching -target %s", strings.Join(m.TargetedTags, ","))
		}
		return fmt.Errorf("no answer to %s within %s: %s replied; check -target, or raise -timeout", what, timeout, who)
	case errors.As(err, &refused) && refused.Code == slipstream.CodeForbidden && m.Type == slipstream.TypeCMD &&
		!strings.Contains(refused.Text, "allow_commands"):
		return fmt.Errorf("the instance refused %s: %s (forbidden): slipstream.* commands need allow_commands on the listener of -url", what, refused.Text)
	case errors.As(err, &refused):
		return fmt.Errorf("the instance refused %s: %s (%s)", what, refused.Text, refused.Code)
	case errors.As(err, &ce):
		return fmt.Errorf("connection lost while waiting for answers to %s: %v", what, ce.Err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// needTimeout refuses -timeout 0 for commands that wait for replies.
func needTimeout(f *connFlags) error {
	if f.timeout <= 0 {
		return f.usage("-timeout must be more than 0: instances never say that nobody answered, so the wait needs an end")
	}
	return nil
}
