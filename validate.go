package slipstream

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Default limits (PROTOCOL.md "Transport").
const (
	DefaultMaxFrame     = 1 << 20 // bytes in one frame
	DefaultMaxPath      = 32      // entries in messagePath
	DefaultMaxMessageID = 128     // bytes in one id
	DefaultMaxKey       = 1024    // bytes in key
	DefaultMaxTags      = 32      // entries in targetedTags or tags
	DefaultMaxTagLen    = 64      // bytes in one tag
)

// Limits bound what Decode and Validate accept. A field that is zero (or
// negative) means its default, so a partly filled Limits is safe; a nil
// *Limits means DefaultLimits.
//
// A frame over MaxFrame is refused with too_large (by Decode, before any
// parsing); every other limit is a field rule and is refused with invalid
// (by Validate).
type Limits struct {
	MaxFrame     int // bytes in one frame
	MaxPath      int // entries in messagePath
	MaxMessageID int // bytes in messageId and inReplyTo, and in every instance or cluster id
	MaxKey       int // bytes in key
	MaxTags      int // entries in targetedTags, and in a HELLO's tags
	MaxTagLen    int // bytes in one tag
}

// DefaultLimits returns the protocol's defaults: 1 MiB frames, 32 hops,
// 128-byte ids, 1024-byte keys, 32 tags of at most 64 bytes.
func DefaultLimits() *Limits {
	return &Limits{
		MaxFrame:     DefaultMaxFrame,
		MaxPath:      DefaultMaxPath,
		MaxMessageID: DefaultMaxMessageID,
		MaxKey:       DefaultMaxKey,
		MaxTags:      DefaultMaxTags,
		MaxTagLen:    DefaultMaxTagLen,
	}
}

func orDefault(l *Limits, get func(*Limits) int, def int) int {
	if l == nil {
		return def
	}
	if v := get(l); v > 0 {
		return v
	}
	return def
}

func (l *Limits) maxFrame() int {
	return orDefault(l, func(l *Limits) int { return l.MaxFrame }, DefaultMaxFrame)
}
func (l *Limits) maxPath() int {
	return orDefault(l, func(l *Limits) int { return l.MaxPath }, DefaultMaxPath)
}
func (l *Limits) maxID() int {
	return orDefault(l, func(l *Limits) int { return l.MaxMessageID }, DefaultMaxMessageID)
}
func (l *Limits) maxKey() int {
	return orDefault(l, func(l *Limits) int { return l.MaxKey }, DefaultMaxKey)
}
func (l *Limits) maxTags() int {
	return orDefault(l, func(l *Limits) int { return l.MaxTags }, DefaultMaxTags)
}
func (l *Limits) maxTagLen() int {
	return orDefault(l, func(l *Limits) int { return l.MaxTagLen }, DefaultMaxTagLen)
}

// Validate checks m against the rules of its type (PROTOCOL.md) and lim (nil
// means DefaultLimits). The error is an *Error: unsupported for an unknown
// type or protocol version, invalid for everything else; it carries m's
// messageId when that id is itself valid.
func (m *Message) Validate(lim *Limits) error {
	if e := m.validate(lim); e != nil {
		e.MessageID = echoID(m, lim)
		return e
	}
	return nil
}

func invalid(format string, args ...any) *Error {
	return newError(CodeInvalid, fmt.Sprintf(format, args...))
}

// checkID returns what is wrong with an id ("" when nothing). An empty id is
// absent, which is fine here; required ids are checked by their type.
func checkID(id string, max int) string {
	switch {
	case len(id) > max:
		return fmt.Sprintf("is longer than %d bytes", max)
	case strings.IndexByte(id, 0) >= 0:
		return "must not contain NUL bytes"
	}
	return ""
}

// checkList checks messagePath, targetedTags or tags.
func checkList(name string, list []string, maxCount, maxLen int, unit string) *Error {
	if len(list) > maxCount {
		return invalid("%s has %d %s; the limit is %d", name, len(list), unit, maxCount)
	}
	for _, s := range list {
		if s == "" {
			return invalid("%s entries must be non-empty strings", name)
		}
		if p := checkID(s, maxLen); p != "" {
			return invalid("%s entry %s %s", name, quoteName(s), p)
		}
	}
	return nil
}

func (m *Message) validate(lim *Limits) *Error {
	switch {
	case m.Type == "":
		return invalid("type is required")
	case !m.Type.Known():
		return newError(CodeUnsupported, "unsupported type "+quoteName(string(m.Type)))
	}
	idMax := lim.maxID()
	ids := [...]struct{ name, v string }{
		{"messageId", m.MessageID}, {"inReplyTo", m.InReplyTo},
		{"originInstanceId", m.OriginInstanceID}, {"sourceInstanceId", m.SourceInstanceID},
		{"clusterGroupId", m.ClusterGroupID}, {"instanceId", m.InstanceID},
	}
	for _, id := range ids {
		if p := checkID(id.v, idMax); p != "" {
			return invalid("%s %s", id.name, p)
		}
	}
	if e := checkList("messagePath", m.MessagePath, lim.maxPath(), idMax, "hops"); e != nil {
		return e
	}
	if e := checkList("targetedTags", m.TargetedTags, lim.maxTags(), lim.maxTagLen(), "tags"); e != nil {
		return e
	}
	if e := checkList("tags", m.Tags, lim.maxTags(), lim.maxTagLen(), "tags"); e != nil {
		return e
	}
	if max := lim.maxKey(); len(m.Key) > max {
		return invalid("key is longer than %d bytes", max)
	}
	if m.Timestamp < 0 {
		return invalid("timestamp must be a non-negative integer (milliseconds since the Unix epoch)")
	}
	if m.Role != "" && m.Role != RolePeer && m.Role != RoleClient {
		return invalid("role must be %q or %q", RolePeer, RoleClient)
	}
	switch {
	case m.Protocol < 0:
		return invalid("protocol must be a positive integer")
	case m.Protocol > 0 && m.Protocol != ProtocolVersion:
		return newError(CodeUnsupported, fmt.Sprintf("protocol version %d is not supported; this instance speaks version %d", m.Protocol, ProtocolVersion))
	}
	return m.validateType()
}

// rawKind returns the first byte of a raw JSON value ('{', '[', '"', 't',
// 'f', 'n', or a number's first byte), or 0 when it is absent.
func rawKind(raw []byte) byte {
	if i := skipSpace(raw, 0); i < len(raw) {
		return raw[i]
	}
	return 0
}

func (m *Message) validateType() *Error {
	t := m.Type
	switch t {
	case TypeSK, TypeSA, TypeSW:
		if m.Key == "" {
			return invalid("%s key is required", t)
		}
		switch k := rawKind(m.Value); {
		case k == 0 && t == TypeSK:
			return invalid("SK value is required (null deletes the key)")
		case t == TypeSA && k != '[':
			return invalid("SA value must be an array")
		case t == TypeSW:
			return checkWeights(t, m.Value)
		}
	case TypeGK, TypeGA, TypeGW:
		if !m.IsReply() {
			if m.Key == "" {
				return invalid("%s key is required", t)
			}
			break
		}
		switch k := rawKind(m.Value); {
		case k == 0 || k == 'n' || t == TypeGK:
		case t == TypeGA && k != '[':
			return invalid("GA reply value must be an array")
		case t == TypeGW:
			return checkWeights(t, m.Value)
		}
	case TypeCMD:
		if m.IsReply() {
			if m.Result == nil && m.Error == "" {
				return invalid("CMD reply needs result or error")
			}
			break
		}
		if m.Command == "" {
			return invalid("CMD command is required")
		}
		if k := rawKind(m.Args); k != 0 && k != '{' && k != 'n' {
			return invalid("CMD args must be an object")
		}
	case TypeACK:
		if m.MessageID == "" {
			return invalid("ACK messageId is required")
		}
	case TypeERR:
		if m.Code == "" {
			return invalid("ERR code is required")
		}
	}
	return nil
}

// checkWeights checks an SW value (or a GW reply's): an object whose every
// member is a finite JSON number >= 0, each name once.
func checkWeights(t Type, v []byte) *Error {
	i := skipSpace(v, 0)
	if i >= len(v) || v[i] != '{' {
		return invalid(`%s value must be an object of weights, e.g. {"a":70,"b":30}`, t)
	}
	// Depth 2 as inside a frame, so the member scans below cannot fail.
	if end, ok := skipContainer(v, i, 2); !ok || skipSpace(v, end) != len(v) {
		return invalid("%s value is not valid JSON", t)
	}
	// The syntax is known good from here on.
	var seen map[string]struct{}
	i = skipSpace(v, i+1)
	for v[i] != '}' {
		ke, esc, _ := scanString(v, i)
		name := v[i+1 : ke-1]
		if esc {
			name = appendUnquoted(nil, name)
		}
		i = skipSpace(v, skipSpace(v, ke)+1)
		ve, _ := skipValue(v, i, 2)
		w := v[i:ve]
		if c := w[0]; c != '-' && (c < '0' || c > '9') {
			return invalid("%s weight %s must be a number", t, quoteName(string(name)))
		}
		f, _ := strconv.ParseFloat(string(w), 64)
		if math.IsInf(f, 0) {
			return invalid("%s weight %s must be finite", t, quoteName(string(name)))
		}
		if f < 0 {
			return invalid("%s weight %s must be >= 0", t, quoteName(string(name)))
		}
		if seen == nil {
			seen = make(map[string]struct{})
		}
		if _, dup := seen[string(name)]; dup {
			return invalid("%s value has duplicate member %s", t, quoteName(string(name)))
		}
		seen[string(name)] = struct{}{}
		if i = skipSpace(v, ve); v[i] == ',' {
			i = skipSpace(v, i+1)
		}
	}
	return nil
}
