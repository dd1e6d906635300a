package slipstream

import (
	"strconv"
	"unicode/utf8"
)

// Encode returns m as one JSON object: known fields first in a fixed order,
// then Extra in its order, each raw value byte for byte.
func Encode(m *Message) []byte { return AppendEncode(nil, m) }

// AppendEncode appends the encoding of m to dst and returns the extended
// buffer.
//
// Known fields come in the order type, messageId, inReplyTo,
// originInstanceId, sourceInstanceId, clusterGroupId, messagePath,
// targetedTags, timestamp, traceparent, tracestate, key, value, found,
// command, args, result, code, error, protocol, instanceId, tags, role, acks;
// absent ones are omitted: empty strings, nil slices (a non-nil empty slice
// is written as []), a zero timestamp or protocol, nil pointers and empty raw
// values. Extra members follow in order; one whose name is a known field, or
// whose value is empty, is skipped, so the output never repeats a member.
//
// Strings are escaped as encoding/json does with SetEscapeHTML(false). Raw
// values (Value, Args, Result, Extra) are written verbatim and must be valid
// JSON, which they are when they come from Decode.
func AppendEncode(dst []byte, m *Message) []byte {
	if n := encodedSizeHint(m); cap(dst)-len(dst) < n {
		grown := make([]byte, len(dst), len(dst)+n)
		copy(grown, dst)
		dst = grown
	}
	dst = append(dst, '{')
	open := len(dst)
	key := func(dst []byte, f int) []byte {
		if len(dst) > open {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = append(dst, fieldNames[f]...)
		return append(dst, '"', ':')
	}
	str := func(dst []byte, f int, s string) []byte {
		if s == "" {
			return dst
		}
		return appendString(key(dst, f), s)
	}
	list := func(dst []byte, f int, l []string) []byte {
		if l == nil {
			return dst
		}
		dst = append(key(dst, f), '[')
		for i, s := range l {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, s)
		}
		return append(dst, ']')
	}
	raw := func(dst []byte, f int, r []byte) []byte {
		if len(r) == 0 {
			return dst
		}
		return append(key(dst, f), r...)
	}
	boolean := func(dst []byte, f int, b *bool) []byte {
		if b == nil {
			return dst
		}
		return strconv.AppendBool(key(dst, f), *b)
	}
	dst = str(dst, fType, string(m.Type))
	dst = str(dst, fMessageID, m.MessageID)
	dst = str(dst, fInReplyTo, m.InReplyTo)
	dst = str(dst, fOrigin, m.OriginInstanceID)
	dst = str(dst, fSource, m.SourceInstanceID)
	dst = str(dst, fCluster, m.ClusterGroupID)
	dst = list(dst, fPath, m.MessagePath)
	dst = list(dst, fTargeted, m.TargetedTags)
	if m.Timestamp != 0 {
		dst = strconv.AppendInt(key(dst, fTimestamp), m.Timestamp, 10)
	}
	dst = str(dst, fTraceParent, m.TraceParent)
	dst = str(dst, fTraceState, m.TraceState)
	dst = str(dst, fKey, m.Key)
	dst = raw(dst, fValue, m.Value)
	dst = boolean(dst, fFound, m.Found)
	dst = str(dst, fCommand, m.Command)
	dst = raw(dst, fArgs, m.Args)
	dst = raw(dst, fResult, m.Result)
	dst = str(dst, fCode, m.Code)
	dst = str(dst, fError, m.Error)
	if m.Protocol != 0 {
		dst = strconv.AppendInt(key(dst, fProtocol), int64(m.Protocol), 10)
	}
	dst = str(dst, fInstanceID, m.InstanceID)
	dst = list(dst, fTags, m.Tags)
	dst = str(dst, fRole, m.Role)
	dst = boolean(dst, fAcks, m.Acks)
	for _, f := range m.Extra {
		if len(f.Value) == 0 || lookupField(f.Name) >= 0 {
			continue
		}
		if len(dst) > open {
			dst = append(dst, ',')
		}
		dst = appendString(dst, f.Name)
		dst = append(dst, ':')
		dst = append(dst, f.Value...)
	}
	return append(dst, '}')
}

// encodedSizeHint estimates the encoded size of m (exact but for escapes),
// so AppendEncode allocates once.
func encodedSizeHint(m *Message) int {
	n := 2 + 20*numFields/2 // braces, and names and punctuation of typical fields
	for _, s := range [...]string{string(m.Type), m.MessageID, m.InReplyTo, m.OriginInstanceID,
		m.SourceInstanceID, m.ClusterGroupID, m.TraceParent, m.TraceState, m.Key, m.Command,
		m.Code, m.Error, m.InstanceID, m.Role} {
		n += len(s)
	}
	for _, l := range [...][]string{m.MessagePath, m.TargetedTags, m.Tags} {
		for _, s := range l {
			n += len(s) + 3
		}
	}
	n += len(m.Value) + len(m.Args) + len(m.Result)
	for _, f := range m.Extra {
		n += len(f.Name) + len(f.Value) + 4
	}
	return n
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string exactly as encoding/json does with
// SetEscapeHTML(false): \" \\ \b \f \n \r \t, \u00XX for other control
// characters, \u2028 and \u2029 escaped, and each byte of invalid UTF-8
// replaced by \ufffd.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if plain[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
