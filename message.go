package slipstream

import "encoding/json"

// Type is a message's "type" field.
type Type string

// The message types of protocol version 1.
const (
	TypeSK    Type = "SK"    // Set Key: data
	TypeSA    Type = "SA"    // Set Array: data
	TypeSW    Type = "SW"    // Set Weighted: data
	TypeGK    Type = "GK"    // Get Key: request, or its reply when InReplyTo is set
	TypeGA    Type = "GA"    // Get Array: request or reply
	TypeGW    Type = "GW"    // Get Weighted: request or reply
	TypeCMD   Type = "CMD"   // Command: data (a reply when InReplyTo is set)
	TypeACK   Type = "ACK"   // hop-by-hop acknowledgement
	TypeHELLO Type = "HELLO" // control: first frame of a connection
	TypeERR   Type = "ERR"   // control: a message was refused
)

// ProtocolVersion is the version this package speaks in HELLO.
const ProtocolVersion = 1

// Roles a HELLO may declare.
const (
	RolePeer   = "peer"
	RoleClient = "client"
)

// ERR codes (PROTOCOL.md "Control frames").
const (
	CodeBadJSON     = "bad_json"
	CodeInvalid     = "invalid"
	CodeTooLarge    = "too_large"
	CodeUnsupported = "unsupported"
	CodeForbidden   = "forbidden"
	CodeRateLimited = "rate_limited"
	CodeOverloaded  = "overloaded"
	CodeProtocol    = "protocol"
)

// Field is one JSON member this package does not know: its name and its value
// exactly as it arrived (raw JSON bytes).
type Field struct {
	Name  string
	Value json.RawMessage
}

// Message is one protocol frame. Known fields are decoded into the struct;
// everything else is kept in Extra, in arrival order, byte for byte.
//
// Optional scalars that must round-trip "absent" distinctly from a zero value
// use Has* flags or pointers. Value, Args and Result hold raw JSON: Value is
// nil when the "value" member is absent and the 4 bytes `null` when it is
// JSON null (an SK delete).
type Message struct {
	Type             Type
	MessageID        string
	OriginInstanceID string
	SourceInstanceID string
	MessagePath      []string
	TargetedTags     []string
	ClusterGroupID   string
	Timestamp        int64 // milliseconds since the Unix epoch; 0 = absent
	TraceParent      string
	TraceState       string

	// SK SA SW and GK GA GW replies.
	Key   string
	Value json.RawMessage
	Found *bool

	// CMD.
	Command string
	Args    json.RawMessage
	Result  json.RawMessage

	// Replies.
	InReplyTo string

	// ERR ("error" is also a CMD reply field).
	Code  string
	Error string

	// HELLO.
	Protocol   int
	InstanceID string
	Tags       []string
	Role       string
	Acks       *bool

	// Extra holds every member not listed above, in arrival order.
	Extra []Field
}

// IsData reports whether t is stored, acknowledged and deduplicated: SK, SA, SW
// and CMD (PROTOCOL.md "Data types").
func (t Type) IsData() bool {
	switch t {
	case TypeSK, TypeSA, TypeSW, TypeCMD:
		return true
	}
	return false
}

// IsRequest reports whether t is a get (GK, GA, GW).
func (t Type) IsRequest() bool {
	switch t {
	case TypeGK, TypeGA, TypeGW:
		return true
	}
	return false
}

// Known reports whether t is a type of protocol version 1.
func (t Type) Known() bool {
	switch t {
	case TypeSK, TypeSA, TypeSW, TypeGK, TypeGA, TypeGW, TypeCMD, TypeACK, TypeHELLO, TypeERR:
		return true
	}
	return false
}

// IsReply reports whether m answers a request (InReplyTo set).
func (m *Message) IsReply() bool { return m.InReplyTo != "" }

// InPath reports whether id is in m's messagePath.
func (m *Message) InPath(id string) bool {
	for _, p := range m.MessagePath {
		if p == id {
			return true
		}
	}
	return false
}

// HasAnyTag reports whether tags shares at least one tag with want. An empty
// want matches everything (no targeting).
func HasAnyTag(tags, want []string) bool {
	if len(want) == 0 {
		return true
	}
	for _, w := range want {
		for _, t := range tags {
			if t == w {
				return true
			}
		}
	}
	return false
}

// NewAck builds the hop-by-hop ACK for data message m, sent by instance self.
func NewAck(m *Message, self string) *Message {
	return &Message{
		Type:             TypeACK,
		MessageID:        m.MessageID,
		ClusterGroupID:   m.ClusterGroupID,
		OriginInstanceID: self,
		SourceInstanceID: self,
		MessagePath:      []string{self},
	}
}

// NewErr builds an ERR frame answering messageID (which may be empty).
func NewErr(messageID, code, text string) *Message {
	return &Message{Type: TypeERR, MessageID: messageID, Code: code, Error: text}
}
