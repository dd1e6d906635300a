package admin

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestTokenGuardsV1Only(t *testing.T) {
	s := New(prometheus.NewRegistry(), nil, slog.New(slog.DiscardHandler))
	s.Handle("GET /v1/thing", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { WriteJSON(w, 200, "ok") }))
	get := func(path, auth string) int {
		req := httptest.NewRequest("GET", path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, req)
		return rec.Code
	}
	if c := get("/v1/thing", ""); c != 200 {
		t.Fatalf("no token configured: %d", c)
	}
	s.RequireToken("s3cret")
	for _, tc := range []struct {
		path, auth string
		want       int
	}{
		{"/v1/thing", "", 401},
		{"/v1/thing", "Bearer wrong", 401},
		{"/v1/thing", "Bearer s3cre", 401},
		{"/v1/thing", "Basic s3cret", 401},
		{"/v1/thing", "s3cret", 401},
		{"/v1/thing", "Bearer s3cret", 200},
		{"/v1/nothing", "", 401}, // unknown routes too: no probing without the token
		{"/v1", "", 401},
		{"/healthz", "", 200},
		{"/metrics", "", 200},
		{"/readyz", "", 200},
	} {
		if c := get(tc.path, tc.auth); c != tc.want {
			t.Errorf("GET %s with %q: %d, want %d", tc.path, tc.auth, c, tc.want)
		}
	}
}
