// Package admin is the instance's operator HTTP API: /metrics (Prometheus),
// /healthz (alive), /readyz (store writable, listeners up) and the /v1 API.
// It listens on loopback by default.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
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
}

// New builds the admin API over the metrics gatherer g.
func New(g prometheus.Gatherer, checks []Check, log *slog.Logger) *Server {
	s := &Server{mux: http.NewServeMux(), checks: checks, log: log}
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	return s
}

// Handle adds a route (for the /v1 API of later parts).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Handler is the whole API (tests use it directly).
func (s *Server) Handler() http.Handler { return s.mux }

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
	s.srv = &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin listener failed", "err", err)
		}
	}()
	return nil
}

// Addr is the bound address (nil before Listen).
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown stops the listener, waiting for requests in progress until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Shutdown(ctx)
}
