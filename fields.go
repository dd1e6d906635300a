package slipstream

// The known members, indexed for duplicate detection and error texts.
const (
	fType = iota
	fMessageID
	fInReplyTo
	fOrigin
	fSource
	fCluster
	fPath
	fTargeted
	fTimestamp
	fTraceParent
	fTraceState
	fKey
	fValue
	fFound
	fCommand
	fArgs
	fResult
	fCode
	fError
	fProtocol
	fInstanceID
	fTags
	fRole
	fAcks
	numFields
)

// fieldNames are the JSON names of the known members, in encoding order.
var fieldNames = [numFields]string{
	fType:        "type",
	fMessageID:   "messageId",
	fInReplyTo:   "inReplyTo",
	fOrigin:      "originInstanceId",
	fSource:      "sourceInstanceId",
	fCluster:     "clusterGroupId",
	fPath:        "messagePath",
	fTargeted:    "targetedTags",
	fTimestamp:   "timestamp",
	fTraceParent: "traceparent",
	fTraceState:  "tracestate",
	fKey:         "key",
	fValue:       "value",
	fFound:       "found",
	fCommand:     "command",
	fArgs:        "args",
	fResult:      "result",
	fCode:        "code",
	fError:       "error",
	fProtocol:    "protocol",
	fInstanceID:  "instanceId",
	fTags:        "tags",
	fRole:        "role",
	fAcks:        "acks",
}

// lookupField returns the index of the known member name, or -1. The
// conversion in the switch does not allocate.
func lookupField[T string | []byte](name T) int {
	switch string(name) {
	case "type":
		return fType
	case "messageId":
		return fMessageID
	case "inReplyTo":
		return fInReplyTo
	case "originInstanceId":
		return fOrigin
	case "sourceInstanceId":
		return fSource
	case "clusterGroupId":
		return fCluster
	case "messagePath":
		return fPath
	case "targetedTags":
		return fTargeted
	case "timestamp":
		return fTimestamp
	case "traceparent":
		return fTraceParent
	case "tracestate":
		return fTraceState
	case "key":
		return fKey
	case "value":
		return fValue
	case "found":
		return fFound
	case "command":
		return fCommand
	case "args":
		return fArgs
	case "result":
		return fResult
	case "code":
		return fCode
	case "error":
		return fError
	case "protocol":
		return fProtocol
	case "instanceId":
		return fInstanceID
	case "tags":
		return fTags
	case "role":
		return fRole
	case "acks":
		return fAcks
	}
	return -1
}

// IsKnownField reports whether name is a member the Message struct decodes
// (and so can never appear in Extra).
func IsKnownField(name string) bool { return lookupField(name) >= 0 }

// internType returns the constant for a known type name without allocating.
func internType(b []byte) (Type, bool) {
	switch string(b) {
	case "SK":
		return TypeSK, true
	case "SA":
		return TypeSA, true
	case "SW":
		return TypeSW, true
	case "GK":
		return TypeGK, true
	case "GA":
		return TypeGA, true
	case "GW":
		return TypeGW, true
	case "CMD":
		return TypeCMD, true
	case "ACK":
		return TypeACK, true
	case "HELLO":
		return TypeHELLO, true
	case "ERR":
		return TypeERR, true
	}
	return "", false
}
