package sources

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/bearer"
	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/telemetry"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// This file holds the access controls of websocket_server (docs/SECURITY.md):
// bearer tokens, the browser Origin check, connection limits, and the
// permissions of the links it attaches.

// PermissionsConfig is a `permissions` block: what links may send.
type PermissionsConfig struct {
	Publish []string `hcl:"publish,optional" doc:"message types the links may send: SK SA SW CMD (data) and GK GA GW (reading state); empty: all of them"`
	Targets []string `hcl:"targets,optional" doc:"tags the links may name in targetedTags; empty or [\"*\"]: any tag, and untargeted messages; otherwise every message must be targeted, at listed tags only"`
}

// Validate implements pipeline.Validator.
func (p *PermissionsConfig) Validate() error {
	for _, t := range p.Publish {
		typ := slipstream.Type(t)
		if !typ.IsData() && !typ.IsRequest() {
			return &pipeline.FieldError{Field: "publish", Err: fmt.Errorf("%q is not a message type a link publishes; use SK, SA, SW, CMD, GK, GA or GW", t)}
		}
	}
	if !slices.Contains(p.Targets, "*") {
		if err := checkTags(p.Targets); err != nil {
			return &pipeline.FieldError{Field: "targets", Err: err}
		}
	}
	return nil
}

// perms converts the block; nil when it restricts nothing.
func (p *PermissionsConfig) perms() *link.Permissions {
	var out link.Permissions
	restricted := false
	if len(p.Publish) > 0 {
		restricted = true
		for _, t := range p.Publish {
			out.Publish = append(out.Publish, slipstream.Type(t))
		}
	}
	if len(p.Targets) > 0 && !slices.Contains(p.Targets, "*") {
		restricted = true
		out.Targets = slices.Clone(p.Targets)
	}
	if !restricted {
		return nil
	}
	return &out
}

// PermissionOverride is a `permission "LINK-ID"` block: the whole set of
// permissions of one link, replacing the listener's permissions and
// allow_commands for it.
type PermissionOverride struct {
	ID       string   `hcl:"id,label"`
	Publish  []string `hcl:"publish,optional" doc:"message types the link may send (as in permissions); empty: all"`
	Targets  []string `hcl:"targets,optional" doc:"tags the link may target (as in permissions); empty or [\"*\"]: any"`
	Commands bool     `hcl:"commands,optional" doc:"the link may issue slipstream.* commands"`
}

// Validate implements pipeline.Validator.
func (o *PermissionOverride) Validate() error {
	if err := checkLinkID(o.ID); err != nil {
		return &pipeline.FieldError{Field: "id", Err: err}
	}
	return o.block().Validate()
}

func (o *PermissionOverride) block() *PermissionsConfig {
	return &PermissionsConfig{Publish: o.Publish, Targets: o.Targets}
}

// LimitsConfig is the `limits` block of websocket_server.
type LimitsConfig struct {
	MaxConnections      int           `hcl:"max_connections,optional" doc:"most connections open at once on this listener; more are refused with HTTP 503 (0: no limit)"`
	MaxConnectionsPerIP int           `hcl:"max_connections_per_ip,optional" doc:"most connections open at once from one remote IP address; more are refused with HTTP 429 (0: no limit)"`
	MessagesPerSecond   float64       `hcl:"messages_per_second,optional" doc:"frames each connection may send per second, on average (token bucket; 0: no limit); beyond it frames are answered with ERR rate_limited"`
	BytesPerSecond      float64       `hcl:"bytes_per_second,optional" doc:"bytes of frames each connection may send per second, on average (0: no limit)"`
	Burst               time.Duration `hcl:"burst,optional" doc:"how much of the rates a connection may use at once, as time: 1s lets it send a second's worth in one go"`
	MaxWait             time.Duration `hcl:"max_wait,optional" doc:"a frame over the rate waits up to this long for the bucket (the sender is slowed by TCP back-pressure) before it is refused"`
	CloseAfter          time.Duration `hcl:"close_after,optional" doc:"a connection refused for the rate in every second for this long is closed (code 1008)"`
	HandshakeTimeout    time.Duration `hcl:"handshake_timeout,optional" doc:"longest a new connection may take from TCP accept to the end of the WebSocket upgrade (TLS included)"`
	IdleTimeout         time.Duration `hcl:"idle_timeout,optional" doc:"a connection that sends no frame for this long is closed (code 1000); pongs do not count (0: never)"`
}

// DefaultLimits are the limits of a websocket_server without a limits
// block: no rate limits, 10s handshakes, no idle timeout.
func DefaultLimits() LimitsConfig {
	return LimitsConfig{Burst: time.Second, MaxWait: 100 * time.Millisecond, CloseAfter: 10 * time.Second,
		HandshakeTimeout: 10 * time.Second}
}

// Validate implements pipeline.Validator.
func (l *LimitsConfig) Validate() error {
	for _, f := range []struct {
		name string
		bad  bool
		want string
	}{
		{"max_connections", l.MaxConnections < 0, "must be 0 (no limit) or more"},
		{"max_connections_per_ip", l.MaxConnectionsPerIP < 0, "must be 0 (no limit) or more"},
		{"messages_per_second", l.MessagesPerSecond < 0, "must be 0 (no limit) or more"},
		{"bytes_per_second", l.BytesPerSecond < 0, "must be 0 (no limit) or more"},
		{"burst", l.Burst <= 0, "must be greater than 0"},
		{"close_after", l.CloseAfter < time.Second, "must be at least 1s"},
		{"handshake_timeout", l.HandshakeTimeout < 100*time.Millisecond, "must be at least 100ms"},
		{"idle_timeout", l.IdleTimeout != 0 && l.IdleTimeout < time.Second, "must be 0 (never) or at least 1s"},
	} {
		if f.bad {
			return &pipeline.FieldError{Field: f.name, Err: errors.New(f.want)}
		}
	}
	return nil
}

// access holds what websocket_server checks before it upgrades a request.
type access struct {
	tokens    []bearer.Sum // of the tokens (config); see package bearer
	tokenFile string
	origins   []string // allowed Origin values; "*" any

	mu        sync.Mutex
	fileStamp string         // size and mtime of token_file when read
	fileTok   []bearer.Sum   // of token_file's tokens
	fileErr   error          // why token_file could not be read (refuse all)
	perIP     map[string]int // open connections per remote IP
	total     int            // open connections
	limits    LimitsConfig
}

func newAccess(cfg *ServerConfig) (*access, error) {
	a := &access{tokenFile: cfg.TokenFile, origins: cfg.AllowedOrigins, perIP: map[string]int{}, limits: cfg.Limits}
	for _, t := range cfg.Tokens {
		if t == "" {
			return nil, &pipeline.FieldError{Field: "tokens", Err: errors.New("must not hold an empty token (is an env() variable unset?)")}
		}
		a.tokens = append(a.tokens, bearer.Hash(t))
	}
	if a.tokenFile != "" {
		a.mu.Lock()
		err := a.reloadTokenFile()
		a.mu.Unlock()
		if err != nil {
			return nil, &pipeline.FieldError{Field: "token_file", Err: err}
		}
	}
	return a, nil
}

// requiresToken reports whether connections must present a bearer token.
func (a *access) requiresToken() bool { return len(a.tokens) > 0 || a.tokenFile != "" }

// reloadTokenFile re-reads token_file when its size or mtime changed.
// Called with a.mu held.
func (a *access) reloadTokenFile() error {
	st, err := os.Stat(a.tokenFile)
	if err != nil {
		a.fileErr = err
		return err
	}
	stamp := fmt.Sprint(st.Size(), st.ModTime().UnixNano())
	if stamp == a.fileStamp && a.fileErr == nil {
		return nil
	}
	b, err := os.ReadFile(a.tokenFile)
	if err != nil {
		a.fileErr = err
		return err
	}
	var toks []bearer.Sum
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		toks = append(toks, bearer.Hash(line))
	}
	a.fileStamp, a.fileTok, a.fileErr = stamp, toks, nil
	return nil
}

// token returns the bearer token of r: the Authorization header, else the
// `token` query parameter (for browsers, which cannot set headers on a
// WebSocket).
func token(r *http.Request) string {
	if t, present := bearer.FromHeader(r); present {
		return t
	}
	return r.URL.Query().Get("token")
}

// checkToken reports whether r carries an accepted token (package bearer:
// every accepted token is compared, in constant time).
func (a *access) checkToken(r *http.Request) bool {
	if !a.requiresToken() {
		return true
	}
	var file []bearer.Sum
	if a.tokenFile != "" {
		a.mu.Lock()
		_ = a.reloadTokenFile() // a vanished file refuses every file token
		if a.fileErr == nil {
			file = a.fileTok
		}
		a.mu.Unlock()
	}
	return bearer.Match(token(r), a.tokens, file)
}

// checkOrigin is the upgrader's Origin check: requests without an Origin
// header (not from a browser) pass; with allowed_origins set, the Origin
// must be listed (or the list holds "*"); without it, the Origin's host must
// be the request's Host (same origin), as browsers' own pages would be.
func (a *access) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if len(a.origins) > 0 {
		return slices.Contains(a.origins, "*") || slices.Contains(a.origins, origin)
	}
	u, err := url.Parse(origin)
	return err == nil && strings.EqualFold(u.Host, r.Host)
}

// admit counts a new connection from remote, or reports why it is refused
// (HTTP status and text). release undoes it.
func (a *access) admit(remote string) (status int, text string) {
	ip := remoteIP(remote)
	a.mu.Lock()
	defer a.mu.Unlock()
	if m := a.limits.MaxConnections; m > 0 && a.total >= m {
		return http.StatusServiceUnavailable, fmt.Sprintf("this listener has its maximum of %d connections; retry later", m)
	}
	if m := a.limits.MaxConnectionsPerIP; m > 0 && a.perIP[ip] >= m {
		return http.StatusTooManyRequests, fmt.Sprintf("%d connections from %s already; close one first", m, ip)
	}
	a.total++
	a.perIP[ip]++
	return 0, ""
}

func (a *access) release(remote string) {
	ip := remoteIP(remote)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.total--
	if a.perIP[ip]--; a.perIP[ip] <= 0 {
		delete(a.perIP, ip)
	}
}

func remoteIP(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// serverMetrics are websocket_server's instruments, shared by every
// listener of the instance.
type serverMetrics struct {
	refused     *prometheus.CounterVec // reason
	rateLimited prometheus.Counter
	rateClosed  prometheus.Counter
}

func newServerMetrics(reg prometheus.Registerer) (*serverMetrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	refused, err := telemetry.RegisterShared(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipstream_connections_refused_total",
		Help: "WebSocket connections refused before the upgrade, by reason: token (no accepted bearer token), origin, max_connections, max_connections_per_ip.",
	}, []string{"reason"}))
	if err != nil {
		return nil, err
	}
	limited, err := telemetry.RegisterShared(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "slipstream_rate_limited_total",
		Help: "Frames refused with ERR rate_limited because their connection exceeded the listener's messages_per_second or bytes_per_second.",
	}))
	if err != nil {
		return nil, err
	}
	closed, err := telemetry.RegisterShared(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "slipstream_rate_limit_closes_total",
		Help: "Connections closed (1008) because they were held back by the rate limits in every second for close_after.",
	}))
	if err != nil {
		return nil, err
	}
	return &serverMetrics{refused: refused, rateLimited: limited, rateClosed: closed}, nil
}
