package slipstream

import (
	"encoding/json"
	"testing"
)

// benchFrame is a typical forwarded SK of about 300 bytes with two members
// the protocol does not know.
var benchFrame = []byte(`{"type":"SK","messageId":"01jbz5q7f8x3k2m9n4p6r8t0va","originInstanceId":"pi-aws",` +
	`"sourceInstanceId":"aws-1","clusterGroupId":"cluster-1","messagePath":["aws-1","azure-1"],` +
	`"timestamp":1700000000000,"key":"order:123","value":{"status":"paid","amount":1250,"currency":"EUR"},` +
	`"tenant":"acme-payments","meta":{"source":"checkout","retry":0}}`)

func BenchmarkDecode(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(benchFrame)))
	for b.Loop() {
		if _, err := Decode(benchFrame, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeValidate(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(benchFrame)))
	for b.Loop() {
		m, err := Decode(benchFrame, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Validate(nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeStdlib is the baseline: encoding/json into a map of raw
// members, which does less (no typed fields, no order) than Decode.
func BenchmarkDecodeStdlib(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(benchFrame)))
	for b.Loop() {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(benchFrame, &m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	m, err := Decode(benchFrame, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(benchFrame)))
	for b.Loop() {
		_ = Encode(m)
	}
}

func BenchmarkAppendEncode(b *testing.B) {
	m, err := Decode(benchFrame, nil)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	b.SetBytes(int64(len(benchFrame)))
	for b.Loop() {
		buf = AppendEncode(buf[:0], m)
	}
}

func BenchmarkEncodeStdlib(b *testing.B) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(benchFrame, &m); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(benchFrame)))
	for b.Loop() {
		if _, err := json.Marshal(m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNewMessageID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = NewMessageID()
	}
}
