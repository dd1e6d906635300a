package slipstream

import (
	"fmt"
	"unsafe"
)

// Decode parses one frame: a single JSON object in UTF-8.
//
// Known members are decoded into the Message with strict types; every other
// member is kept in Extra, in arrival order, its value byte for byte. A known
// member whose value is null counts as absent, except the raw members
// "value", "args" and "result", whose null is kept as the 4 bytes `null` (an
// SK null deletes its key).
// Decode copies what it keeps, so data may be reused once it returns.
//
// The error is always an *Error: too_large when data exceeds lim.MaxFrame,
// bad_json when data is not exactly one valid JSON object in valid UTF-8, and
// invalid for a known member of the wrong type or a duplicate member. Decode
// checks types only; call Validate for the rules of each message type. The
// error carries the messageId when it was read before the failure and is
// itself valid, so its Frame can echo it. A nil lim means DefaultLimits.
func Decode(data []byte, lim *Limits) (*Message, error) {
	if max := lim.maxFrame(); len(data) > max {
		return nil, newError(CodeTooLarge, fmt.Sprintf("frame of %d bytes exceeds the limit of %d bytes", len(data), max))
	}
	d := decoder{data: data}
	m, err := d.decode()
	if err != nil {
		err.MessageID = echoID(d.m, lim)
		return nil, err
	}
	return m, nil
}

// echoID returns m's messageId if it is fit to be echoed in an ERR frame.
func echoID(m *Message, lim *Limits) string {
	if m == nil || checkID(m.MessageID, lim.maxID()) != "" {
		return ""
	}
	return m.MessageID
}

// maxInlineExtra is how many unknown members are checked for duplicates by
// a linear scan before a map takes over (keeping hostile frames linear).
const maxInlineExtra = 16

type decoder struct {
	data     []byte
	header   bool // DecodeHeader: only the members of Header are kept
	m        *Message
	arena    []byte // decoded string bytes; bytes below len are never rewritten
	raw      []byte // private copy of data[rawBase:], backing the raw values
	rawBase  int
	fieldErr *Error // first member error; reported only if the frame is valid JSON
	seen     uint32 // known members seen, by index
}

func badJSON(text string) *Error { return newError(CodeBadJSON, "bad JSON: "+text) }

func (d *decoder) fieldError(text string) {
	if d.fieldErr == nil {
		d.fieldErr = newError(CodeInvalid, text)
	}
}

func (d *decoder) decode() (*Message, *Error) {
	data := d.data
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return nil, badJSON("a frame must be one JSON object")
	}
	if d.m == nil {
		d.m = new(Message)
	}
	var extraBuf [8]Field
	extra := extraBuf[:0]
	var names map[string]struct{} // unknown names, once there are many
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		i++
	} else {
		for {
			if i >= len(data) || data[i] != '"' {
				return nil, badJSON("expected a member name")
			}
			ke, kesc, ok := scanString(data, i)
			if !ok {
				return nil, badJSON("invalid string")
			}
			name := data[i+1 : ke-1]
			if i = skipSpace(data, ke); i >= len(data) || data[i] != ':' {
				return nil, badJSON("expected ':' after a member name")
			}
			if i = skipSpace(data, i+1); i >= len(data) {
				return nil, badJSON("missing value")
			}
			var scratch [32]byte
			if kesc {
				name = appendUnquoted(scratch[:0], name)
			}
			var end int
			if f := lookupField(name); d.header && !headerField(f) {
				end, ok = skipValue(data, i, 1)
			} else if f >= 0 {
				if d.seen&(1<<f) != 0 {
					d.fieldError("duplicate member " + quoteName(fieldNames[f]))
				}
				d.seen |= 1 << f
				end, ok = d.field(f, i)
			} else if end, ok = skipValue(data, i, 1); ok {
				dup := false
				if names == nil {
					for k := range extra {
						if extra[k].Name == string(name) {
							dup = true
							break
						}
					}
				} else {
					_, dup = names[string(name)]
				}
				if dup {
					d.fieldError("duplicate member " + quoteName(string(name)))
				} else {
					nm := d.str(name, false)
					extra = append(extra, Field{Name: nm, Value: d.rawValue(i, end)})
					if names != nil {
						names[nm] = struct{}{}
					} else if len(extra) > maxInlineExtra {
						names = make(map[string]struct{}, 2*len(extra))
						for k := range extra {
							names[extra[k].Name] = struct{}{}
						}
					}
				}
			}
			if !ok {
				return nil, badJSON("invalid value of member " + quoteName(string(name)))
			}
			if i = skipSpace(data, end); i >= len(data) {
				return nil, badJSON("unterminated object")
			}
			if data[i] == '}' {
				i++
				break
			}
			if data[i] != ',' {
				return nil, badJSON("expected ',' or '}' after a member")
			}
			i = skipSpace(data, i+1)
		}
	}
	if skipSpace(data, i) != len(data) {
		return nil, badJSON("unexpected data after the JSON object")
	}
	if d.fieldErr != nil {
		return nil, d.fieldErr
	}
	if len(extra) > 0 {
		d.m.Extra = make([]Field, len(extra))
		copy(d.m.Extra, extra)
	}
	return d.m, nil
}

// str returns s (decoded first if esc) as a string backed by the arena, so
// the strings of one message share a few allocations.
func (d *decoder) str(s []byte, esc bool) string {
	if len(s) == 0 {
		return ""
	}
	if cap(d.arena)-len(d.arena) < len(s) {
		// A fresh chunk: strings already handed out keep the old one alive.
		d.arena = make([]byte, 0, max(len(s), min(len(d.data), 256), 2*cap(d.arena)))
	}
	off := len(d.arena)
	if esc {
		d.arena = appendUnquoted(d.arena, s) // never longer than s: no reallocation
	} else {
		d.arena = append(d.arena, s...)
	}
	if len(d.arena) == off {
		return ""
	}
	// The bytes at [off, len) are never written again (str only appends),
	// which is the invariant unsafe.String needs; strings.Builder relies on
	// the same one.
	return unsafe.String(&d.arena[off], len(d.arena)-off)
}

// rawValue returns a private copy of data[start:end]. The first call copies
// the rest of the frame once; later raw values are sub-slices of that copy,
// capped so appending to one cannot overwrite another.
func (d *decoder) rawValue(start, end int) []byte {
	if d.raw == nil {
		d.rawBase = start
		d.raw = append([]byte(nil), d.data[start:]...)
	}
	s, e := start-d.rawBase, end-d.rawBase
	return d.raw[s:e:e]
}

func isNull(v []byte) bool { return string(v) == "null" }

// field decodes known member f whose value starts at i.
func (d *decoder) field(f, i int) (int, bool) {
	m, data := d.m, d.data
	switch f {
	case fType:
		if data[i] != '"' {
			return d.mismatch(f, i, "a string")
		}
		end, esc, ok := scanString(data, i)
		if ok {
			s := data[i+1 : end-1]
			t, known := internType(s)
			if !known {
				t = Type(d.str(s, esc))
			}
			m.Type = t
		}
		return end, ok
	case fMessageID:
		return d.strField(f, i, &m.MessageID)
	case fInReplyTo:
		return d.strField(f, i, &m.InReplyTo)
	case fOrigin:
		return d.strField(f, i, &m.OriginInstanceID)
	case fSource:
		return d.strField(f, i, &m.SourceInstanceID)
	case fCluster:
		return d.strField(f, i, &m.ClusterGroupID)
	case fTraceParent:
		return d.strField(f, i, &m.TraceParent)
	case fTraceState:
		return d.strField(f, i, &m.TraceState)
	case fKey:
		return d.strField(f, i, &m.Key)
	case fCommand:
		return d.strField(f, i, &m.Command)
	case fCode:
		return d.strField(f, i, &m.Code)
	case fError:
		return d.strField(f, i, &m.Error)
	case fInstanceID:
		return d.strField(f, i, &m.InstanceID)
	case fRole:
		return d.strField(f, i, &m.Role)
	case fPath:
		return d.listField(f, i, &m.MessagePath)
	case fTargeted:
		return d.listField(f, i, &m.TargetedTags)
	case fTags:
		return d.listField(f, i, &m.Tags)
	case fTimestamp:
		v, end, ok := d.intField(f, i, "a non-negative integer (milliseconds since the Unix epoch)")
		if v < 0 {
			d.fieldError("timestamp must be a non-negative integer (milliseconds since the Unix epoch)")
		}
		m.Timestamp = v
		return end, ok
	case fProtocol:
		v, end, ok := d.intField(f, i, "an integer")
		if v != int64(int(v)) {
			d.fieldError("protocol must be an integer")
		}
		m.Protocol = int(v)
		return end, ok
	case fFound:
		return d.boolField(f, i, &m.Found)
	case fAcks:
		return d.boolField(f, i, &m.Acks)
	default: // fValue, fArgs, fResult: any JSON, kept raw
		end, ok := skipValue(data, i, 1)
		if !ok {
			return end, ok
		}
		switch raw := d.rawValue(i, end); f {
		case fValue:
			m.Value = raw
		case fArgs:
			m.Args = raw
		default:
			m.Result = raw
		}
		return end, ok
	}
}

// mismatch skips a value of the wrong type for member f: null means absent,
// anything else is an invalid member.
func (d *decoder) mismatch(f, i int, want string) (int, bool) {
	end, ok := skipValue(d.data, i, 1)
	if ok && !isNull(d.data[i:end]) {
		d.fieldError(fieldNames[f] + " must be " + want)
	}
	return end, ok
}

func (d *decoder) strField(f, i int, dst *string) (int, bool) {
	if d.data[i] != '"' {
		return d.mismatch(f, i, "a string")
	}
	end, esc, ok := scanString(d.data, i)
	if ok {
		*dst = d.str(d.data[i+1:end-1], esc)
	}
	return end, ok
}

func (d *decoder) boolField(f, i int, dst **bool) (int, bool) {
	var v bool
	switch d.data[i] {
	case 't':
		v = true
	case 'f':
	default:
		return d.mismatch(f, i, "a boolean")
	}
	end, ok := skipValue(d.data, i, 1)
	if ok {
		*dst = &v
	}
	return end, ok
}

func (d *decoder) intField(f, i int, want string) (int64, int, bool) {
	if c := d.data[i]; c != '-' && (c < '0' || c > '9') {
		end, ok := d.mismatch(f, i, want)
		return 0, end, ok
	}
	end, ok := scanNumber(d.data, i)
	if !ok {
		return 0, end, ok
	}
	v, integral := parseIntegral(d.data[i:end])
	if !integral {
		d.fieldError(fieldNames[f] + " must be " + want)
	}
	return v, end, ok
}

// listField decodes an array of strings. An empty array stays a non-nil
// empty slice so it re-encodes as [].
func (d *decoder) listField(f, i int, dst *[]string) (int, bool) {
	data := d.data
	if data[i] != '[' {
		return d.mismatch(f, i, "an array of strings")
	}
	var buf [16]string
	list, bad := buf[:0], false
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == ']' {
		*dst = []string{}
		return i + 1, true
	}
	for {
		if i < len(data) && data[i] == '"' {
			end, esc, ok := scanString(data, i)
			if !ok {
				return 0, false
			}
			if !bad {
				list = append(list, d.str(data[i+1:end-1], esc))
			}
			i = end
		} else {
			end, ok := skipValue(data, i, 2)
			if !ok {
				return 0, false
			}
			bad, i = true, end
		}
		if i = skipSpace(data, i); i >= len(data) {
			return 0, false
		}
		if data[i] == ']' {
			break
		}
		if data[i] != ',' {
			return 0, false
		}
		i = skipSpace(data, i+1)
	}
	if bad {
		d.fieldError(fieldNames[f] + " must be an array of strings")
	} else {
		spare := 0
		if f == fPath {
			spare = 1 // room for the id each accepting instance appends
		}
		*dst = append(make([]string, 0, len(list)+spare), list...)
	}
	return i + 1, true
}
