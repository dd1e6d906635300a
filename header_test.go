package slipstream

import (
	"errors"
	"testing"
)

// DecodeHeader keeps exactly what Decode finds in the Header members and
// refuses what Decode refuses as JSON.
func TestDecodeHeader(t *testing.T) {
	good := []string{
		`{"type":"SK","messageId":"m1","clusterGroupId":"cg","key":"k","value":{"a":[1,2,{"b":null}]},"timestamp":1700000000000}`,
		`{"value":"x","type":"SA","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","tracestate":"a=b","messageId":"m\u00e9\n","clusterGroupId":"c\"g","x":[],"y":{"z":1}}`,
		`{"type":"CMD","messageId":"c1","command":"app.x","args":null,"targetedTags":["a"],"messagePath":["i1","i2"]}`,
		`{"type":"NEW","messageId":"m2"}`,
		`{}`,
		` {"type":"SW","messageId":"w","value":{"a":1},"found":"not a bool"} `, // a member outside Header is not type-checked
	}
	for _, f := range good {
		h, err := DecodeHeader([]byte(f))
		if err != nil {
			t.Errorf("DecodeHeader(%s): %v", f, err)
			continue
		}
		m, err := Decode([]byte(f), nil)
		if err != nil {
			continue // the last frame: Decode checks every member
		}
		if want := HeaderOf(m); h != want {
			t.Errorf("DecodeHeader(%s) = %+v, want %+v", f, h, want)
		}
	}
	bad := []string{
		``, `[]`, `{"type":"SK"`, `{"type":"SK",}`, `{"value":{"a":}}`, `{"type":"SK"} x`,
		`{"type":1}`, `{"messageId":"a","messageId":"b"}`, `{"timestamp":-1}`, "{\"key\":\"\xff\"}",
	}
	for _, f := range bad {
		_, err := DecodeHeader([]byte(f))
		var pe *Error
		if !errors.As(err, &pe) {
			t.Errorf("DecodeHeader(%q) = %v, want an *Error", f, err)
		}
	}
}

func BenchmarkDecodeHeader(b *testing.B) {
	f := []byte(`{"type":"SK","messageId":"01jbz5q7f8x3k2m9n4p6r8t0va","originInstanceId":"pi-a","sourceInstanceId":"local-1","messagePath":["local-1"],"targetedTags":["bench"],"clusterGroupId":"singleton","timestamp":1700000000000,"key":"bench:0:123","value":{"n":123,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},"benchSentNs":1700000000000000000}`)
	b.Run("Decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Decode(f, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("DecodeHeader", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeHeader(f); err != nil {
				b.Fatal(err)
			}
		}
	})
}
