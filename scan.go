package slipstream

import (
	"math"
	"unicode/utf16"
	"unicode/utf8"
)

// Low-level JSON scanning (RFC 8259) over a byte slice. Every routine takes
// the index where a token starts and returns the index just past it, or
// ok=false when the input is not valid JSON there. Nothing here allocates.

// maxDepth bounds nesting the way encoding/json does (10000 levels, the
// outermost object included), so hostile frames cannot exhaust the stack.
const maxDepth = 10000

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// skipSpace returns the index of the first non-whitespace byte at or after i.
func skipSpace(d []byte, i int) int {
	for i < len(d) && isSpace(d[i]) {
		i++
	}
	return i
}

// plain marks the string bytes that need no attention: everything except
// '"', '\\', control characters and non-ASCII bytes.
var plain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// scanString scans the string whose opening quote is at d[i]. It returns the
// index past the closing quote and whether the string contains escapes. It
// rejects unescaped control characters, bad escapes and invalid UTF-8.
func scanString(d []byte, i int) (end int, esc, ok bool) {
	i++
	start, high := i, false
	for i < len(d) {
		c := d[i]
		if plain[c] {
			i++
			continue
		}
		switch {
		case c == '"':
			if high && !utf8.Valid(d[start:i]) {
				return 0, false, false
			}
			return i + 1, esc, true
		case c == '\\':
			esc = true
			if i+1 >= len(d) {
				return 0, false, false
			}
			switch d[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+5 >= len(d) || !isHex(d[i+2]) || !isHex(d[i+3]) || !isHex(d[i+4]) || !isHex(d[i+5]) {
					return 0, false, false
				}
				i += 6
			default:
				return 0, false, false
			}
		case c < 0x20:
			return 0, false, false
		default: // non-ASCII: checked as a whole at the closing quote
			high = true
			i++
		}
	}
	return 0, false, false
}

func digits(d []byte, i int) int {
	for i < len(d) && '0' <= d[i] && d[i] <= '9' {
		i++
	}
	return i
}

// scanNumber scans -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? at d[i].
func scanNumber(d []byte, i int) (int, bool) {
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i >= len(d):
		return 0, false
	case d[i] == '0':
		i++
	case '1' <= d[i] && d[i] <= '9':
		i = digits(d, i+1)
	default:
		return 0, false
	}
	if i < len(d) && d[i] == '.' {
		j := digits(d, i+1)
		if j == i+1 {
			return 0, false
		}
		i = j
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		j := digits(d, i)
		if j == i {
			return 0, false
		}
		i = j
	}
	return i, true
}

// scanLiteral scans the literal lit (true, false or null) at d[i].
func scanLiteral(d []byte, i int, lit string) (int, bool) {
	if len(d)-i < len(lit) || string(d[i:i+len(lit)]) != lit {
		return 0, false
	}
	return i + len(lit), true
}

// skipValue scans one JSON value of any kind at d[i]; depth is the nesting
// level of the container holding it.
func skipValue(d []byte, i, depth int) (int, bool) {
	if i >= len(d) {
		return 0, false
	}
	switch c := d[i]; c {
	case '"':
		end, _, ok := scanString(d, i)
		return end, ok
	case '{', '[':
		if depth >= maxDepth {
			return 0, false
		}
		return skipContainer(d, i, depth+1)
	case 't':
		return scanLiteral(d, i, "true")
	case 'f':
		return scanLiteral(d, i, "false")
	case 'n':
		return scanLiteral(d, i, "null")
	default:
		if c == '-' || '0' <= c && c <= '9' {
			return scanNumber(d, i)
		}
		return 0, false
	}
}

// skipContainer scans the object or array opening at d[i].
func skipContainer(d []byte, i, depth int) (int, bool) {
	obj := d[i] == '{'
	closer := byte(']')
	if obj {
		closer = '}'
	}
	i = skipSpace(d, i+1)
	if i < len(d) && d[i] == closer {
		return i + 1, true
	}
	for {
		var ok bool
		if obj {
			if i >= len(d) || d[i] != '"' {
				return 0, false
			}
			if i, _, ok = scanString(d, i); !ok {
				return 0, false
			}
			if i = skipSpace(d, i); i >= len(d) || d[i] != ':' {
				return 0, false
			}
			i = skipSpace(d, i+1)
		}
		if i, ok = skipValue(d, i, depth); !ok {
			return 0, false
		}
		if i = skipSpace(d, i); i >= len(d) {
			return 0, false
		}
		switch d[i] {
		case ',':
			i = skipSpace(d, i+1)
		case closer:
			return i + 1, true
		default:
			return 0, false
		}
	}
}

func hexVal(c byte) rune {
	switch {
	case c <= '9':
		return rune(c - '0')
	case c >= 'a':
		return rune(c - 'a' + 10)
	default:
		return rune(c - 'A' + 10)
	}
}

func u4(s []byte) rune {
	return hexVal(s[0])<<12 | hexVal(s[1])<<8 | hexVal(s[2])<<4 | hexVal(s[3])
}

// appendUnquoted appends the decoded content of a string already accepted by
// scanString (s excludes the quotes). Like encoding/json, a surrogate that is
// not half of a valid pair becomes U+FFFD. The result is never longer than s.
func appendUnquoted(dst, s []byte) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c != '\\' {
			j := i + 1
			for j < len(s) && s[j] != '\\' {
				j++
			}
			dst = append(dst, s[i:j]...)
			i = j
			continue
		}
		switch e := s[i+1]; e {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := u4(s[i+2:])
			if utf16.IsSurrogate(r) {
				r2 := utf8.RuneError
				if len(s)-i >= 12 && s[i+6] == '\\' && s[i+7] == 'u' {
					r2 = u4(s[i+8:])
				}
				if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
					dst = utf8.AppendRune(dst, dec)
					i += 12
					continue
				}
				r = utf8.RuneError
			}
			dst = utf8.AppendRune(dst, r)
			i += 6
			continue
		default: // '"', '\\', '/'
			dst = append(dst, e)
		}
		i += 2
	}
	return dst
}

// parseIntegral returns the value of the JSON number b when it is an integer
// that fits in an int64, however it is written (1700000000000, 1.7e12 and
// 17e11 are the same value); ok is false for fractions and overflow.
func parseIntegral(b []byte) (v int64, ok bool) {
	neg := b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) <= 18 && digits(b, 0) == len(b) {
		for _, c := range b {
			v = v*10 + int64(c-'0')
		}
		if neg {
			v = -v
		}
		return v, true
	}
	ip := b[:digits(b, 0)]
	rest := b[len(ip):]
	var frac []byte
	if len(rest) > 0 && rest[0] == '.' {
		frac = rest[1:digits(rest, 1)]
		rest = rest[1+len(frac):]
	}
	exp := 0
	if len(rest) > 0 { // exponent: e or E, optional sign, digits
		rest = rest[1:]
		eneg := rest[0] == '-'
		if rest[0] == '-' || rest[0] == '+' {
			rest = rest[1:]
		}
		for _, c := range rest {
			if exp < 1e8 {
				exp = exp*10 + int(c-'0')
			}
		}
		if eneg {
			exp = -exp
		}
	}
	// The value is the digit string ip+frac times 10^(exp-len(frac)).
	n := len(ip) + len(frac)
	digit := func(k int) byte {
		if k < len(ip) {
			return ip[k]
		}
		return frac[k-len(ip)]
	}
	lo, hi := 0, n
	for lo < n && digit(lo) == '0' {
		lo++
	}
	if lo == n {
		return 0, true
	}
	for digit(hi-1) == '0' {
		hi--
	}
	e := exp - len(frac) + (n - hi)
	if e < 0 || hi-lo+e > 19 {
		return 0, false
	}
	var u uint64
	for k := lo; k < hi; k++ {
		u = u*10 + uint64(digit(k)-'0')
	}
	for ; e > 0; e-- {
		u *= 10
	}
	if u > math.MaxInt64+1 || u == math.MaxInt64+1 && !neg {
		return 0, false
	}
	v = int64(u)
	if neg {
		v = -v
	}
	return v, true
}
