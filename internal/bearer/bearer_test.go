package bearer

import (
	"net/http/httptest"
	"testing"
)

func TestFromHeader(t *testing.T) {
	for _, c := range []struct {
		header, want string
		present      bool
	}{
		{"", "", false},
		{"Bearer s3cret", "s3cret", true},
		{"Bearer  s3cret ", "s3cret", true},
		{"Basic dXNlcjpwYXNz", "", true},
		{"bearer s3cret", "", true}, // the scheme is matched as sent by our clients
	} {
		r := httptest.NewRequest("GET", "/", nil)
		if c.header != "" {
			r.Header.Set("Authorization", c.header)
		}
		got, present := FromHeader(r)
		if got != c.want || present != c.present {
			t.Errorf("Authorization %q: got %q, %v; want %q, %v", c.header, got, present, c.want, c.present)
		}
	}
}

func TestMatch(t *testing.T) {
	a, b := []Sum{Hash("one"), Hash("two")}, []Sum{Hash("three")}
	for _, c := range []struct {
		token string
		want  bool
	}{
		{"one", true}, {"two", true}, {"three", true},
		{"four", false}, {"", false}, {"one ", false}, {"On", false},
	} {
		if got := Match(c.token, a, b); got != c.want {
			t.Errorf("Match(%q) = %v, want %v", c.token, got, c.want)
		}
	}
	if Match("one") {
		t.Error("Match with no sums accepted a token")
	}
	if Match("", []Sum{Hash("")}) {
		t.Error("the empty token matched a configured empty token")
	}
}
