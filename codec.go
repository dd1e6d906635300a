package slipstream

// Encode returns m as one JSON object: known fields first in a fixed order,
// then Extra in its order, each raw value byte for byte.
func Encode(m *Message) []byte { return AppendEncode(nil, m) }

// AppendEncode appends the encoding of m to dst.
func AppendEncode(dst []byte, m *Message) []byte {
	panic("TODO: codec being written")
}
