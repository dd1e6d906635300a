// Package bearer checks bearer tokens (the admin API's, websocket_server's
// tokens and token_file) the one way: tokens are kept only as SHA-256 sums
// and compared in constant time over the sums, so neither a token's bytes
// nor its length show in how long a check takes.
package bearer

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

// Sum is the SHA-256 of a token.
type Sum [sha256.Size]byte

// Hash returns the sum of token.
func Hash(token string) Sum { return sha256.Sum256([]byte(token)) }

// FromHeader returns the token of r's "Authorization: Bearer <token>"
// header, trimmed of spaces. present reports whether r has an Authorization
// header at all (a header of another scheme gives "" and true).
func FromHeader(r *http.Request) (token string, present bool) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", false
	}
	t, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return "", true
	}
	return strings.TrimSpace(t), true
}

// Match reports whether token is non-empty and its sum is one of those in
// sets. It compares with every sum, whichever matches, so the time taken
// does not tell which one nearly matched.
func Match(token string, sets ...[]Sum) bool {
	got := Hash(token)
	ok := 0
	for _, set := range sets {
		for _, s := range set {
			ok |= subtle.ConstantTimeCompare(got[:], s[:])
		}
	}
	return ok == 1 && token != ""
}
