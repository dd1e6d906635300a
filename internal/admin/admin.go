// Package admin is the instance's operator HTTP API: /metrics (Prometheus),
// /healthz (alive), /readyz (its checks: store writable, listeners up,
// required peers connected) and the /v1 API (the dead-letter routes of DLQ,
// /v1/log-level of ServeLogLevel, and those other parts add with Handle).
// It listens on loopback by default.
//
// When a token is set (RequireToken, from admin.token), every request to a
// /v1 path must carry it as "Authorization: Bearer <token>", reads included:
// dead letters hold application data. /metrics, /healthz and /readyz stay
// open, for probes and scrapers. A request without the right token gets 401
// and a JSON error.
//
// Every /v1 error is JSON, {"error": "..."}, with a status code that says
// what went wrong: 400 a bad request, 401 no or a wrong token, 404 nothing
// to act on, 409 a conflict with the instance's state, 500 a store failure.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/slipstream-sync/slipstream/internal/bearer"
	"github.com/slipstream-sync/slipstream/internal/telemetry"
)

// Check is one readiness check: nil means ready.
type Check struct {
	Name string
	Fn   func() error
}

// Server is the admin listener.
type Server struct {
	mux    *http.ServeMux
	srv    *http.Server
	ln     net.Listener
	checks []Check
	log    *slog.Logger
	token  bearer.Sum // of the token (when secure)
	secure bool

	done     chan struct{} // closed when Shutdown starts (ends streams)
	doneOnce sync.Once
}

// New builds the admin API over the metrics gatherer g.
func New(g prometheus.Gatherer, checks []Check, log *slog.Logger) *Server {
	s := &Server{mux: http.NewServeMux(), checks: checks, log: log, done: make(chan struct{})}
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	return s
}

// RequireToken makes every /v1 route require "Authorization: Bearer token"
// ("" requires nothing). Call it before Listen.
func (s *Server) RequireToken(token string) {
	s.secure = token != ""
	s.token = bearer.Hash(token)
}

// Handle adds a route (for the /v1 API of later parts). Routes under /v1/
// are guarded by the token (RequireToken).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Handler is the whole API, token check included (tests use it directly).
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serve) }

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if s.secure && (r.URL.Path == "/v1" || strings.HasPrefix(r.URL.Path, "/v1/")) && !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="slipstream admin"`)
		WriteError(w, http.StatusUnauthorized, "this instance requires the admin token: send it as \"Authorization: Bearer <token>\"")
		return
	}
	s.mux.ServeHTTP(w, r)
}

// authorized checks the request's bearer token against the configured one
// (package bearer: constant time, over SHA-256 sums).
func (s *Server) authorized(r *http.Request) bool {
	got, _ := bearer.FromHeader(r)
	return bearer.Match(got, []bearer.Sum{s.token})
}

// WriteJSON writes v as a JSON response with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError writes {"error": msg} with status.
func WriteError(w http.ResponseWriter, status int, msg string) {
	WriteJSON(w, status, map[string]string{"error": msg})
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	type result struct {
		Name  string `json:"name"`
		OK    bool   `json:"ok"`
		Error string `json:"error,omitempty"`
	}
	res := make([]result, 0, len(s.checks))
	ready := true
	for _, c := range s.checks {
		r := result{Name: c.Name, OK: true}
		if err := c.Fn(); err != nil {
			r.OK, r.Error, ready = false, err.Error(), false
		}
		res = append(res, r)
	}
	w.Header().Set("Content-Type", "application/json")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"ready": ready, "checks": res})
}

// Listen binds addr ("127.0.0.1:0" picks a port) and serves in the background.
func (s *Server) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.ln = ln
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin listener failed", "err", err)
		}
	}()
	return nil
}

// Done is closed when Shutdown starts: long-lived responses (streams) end
// then, since Shutdown waits for requests in progress.
func (s *Server) Done() <-chan struct{} { return s.done }

// Addr is the bound address (nil before Listen).
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown stops the listener, waiting for requests in progress until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.doneOnce.Do(func() { close(s.done) })
	if s.srv == nil {
		return nil
	}
	return s.srv.Shutdown(ctx)
}

// ServeLogLevel serves GET /v1/log-level ({"level":"info"}) and PUT
// /v1/log-level with {"level": "debug"|"info"|"warn"|"error"}, which
// changes lv at once.
func (s *Server) ServeLogLevel(lv *slog.LevelVar) {
	s.mux.HandleFunc("GET /v1/log-level", func(w http.ResponseWriter, _ *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"level": telemetry.LevelName(lv.Level())})
	})
	s.mux.HandleFunc("PUT /v1/log-level", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Level string `json:"level"`
		}
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			WriteError(w, http.StatusBadRequest, `the body must be JSON like {"level": "debug"}: `+err.Error())
			return
		}
		l, err := telemetry.ParseLevel(body.Level)
		if err != nil {
			WriteError(w, http.StatusBadRequest, err.Error())
			return
		}
		old := lv.Level()
		lv.Set(l)
		s.log.Info("log level changed", "from", telemetry.LevelName(old), "to", telemetry.LevelName(l))
		WriteJSON(w, http.StatusOK, map[string]string{"level": telemetry.LevelName(l)})
	})
}
