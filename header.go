package slipstream

// Header is what an outbox writer needs of a stored frame besides its bytes:
// the ids an ACK names, the type and timestamp for the metrics, and the
// trace context.
type Header struct {
	Type           Type
	MessageID      string
	ClusterGroupID string
	Timestamp      int64
	TraceParent    string
	TraceState     string
}

// HeaderOf returns m's Header.
func HeaderOf(m *Message) Header {
	return Header{Type: m.Type, MessageID: m.MessageID, ClusterGroupID: m.ClusterGroupID,
		Timestamp: m.Timestamp, TraceParent: m.TraceParent, TraceState: m.TraceState}
}

// DecodeHeader parses a frame as Decode does (it must be exactly one valid
// JSON object, no larger than any limit) but keeps only the members of
// Header: the others, values included, are skipped without being copied or
// type-checked. The members it keeps are checked like Decode's (an error is
// an *Error, with Decode's codes).
func DecodeHeader(data []byte) (Header, error) {
	var m Message
	d := decoder{data: data, header: true, m: &m}
	if _, err := d.decode(); err != nil {
		return Header{}, err
	}
	return HeaderOf(&m), nil
}

// headerField reports whether known member f (-1: unknown) is one of
// Header's.
func headerField(f int) bool {
	switch f {
	case fType, fMessageID, fCluster, fTimestamp, fTraceParent, fTraceState:
		return true
	}
	return false
}
