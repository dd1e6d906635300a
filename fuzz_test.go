package slipstream

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"unicode/utf8"
)

func FuzzDecode(f *testing.F) {
	for _, tc := range protocolExamples {
		f.Add([]byte(tc.in))
	}
	for _, s := range []string{
		`{"type":"SK","key":"k","value":1,"x":{ "a" : [1, 2.50e3 ]},"y":"\u00e9"}`,
		`{"type":"SW","key":"k","value":{"a":-1,"b":"NaN","c":1e400}}`,
		`{"type":"SK","type":"SA"}`, `{"type":"SK",}`, `{"type":1}`, `{"timestamp":1.7e12}`,
		`{"messagePath":["a",1]}`, `{"key":"\ud800\udc00\ud800"}`, "{\"k\":\"\xff\"}", `[]`, ``,
		`{"a":[[[[[[{}]]]]]]} `, `{"":null,"value":null,"args":null}`, `{"x":-0.0e-0}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := Decode(in, nil)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error %T is not *Error", err)
			}
			return
		}
		if !json.Valid(in) || !utf8.Valid(in) {
			t.Fatalf("accepted a frame that is not valid JSON in UTF-8: %q", in)
		}
		_ = m.Validate(nil) // must not panic
		out := Encode(m)
		if !json.Valid(out) {
			t.Fatalf("Encode gave invalid JSON %q from %q", out, in)
		}
		m2, err := Decode(out, nil)
		if err != nil {
			t.Fatalf("Decode(Encode(m)) = %v; out %q from %q", err, out, in)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip differs:\n%#v\n%#v\nfrom %q", m, m2, in)
		}
		if out2 := Encode(m2); !bytes.Equal(out, out2) {
			t.Fatalf("encoding is not stable: %q then %q", out, out2)
		}
		// encoding/json sees the same unknown members, byte for byte.
		var all map[string]json.RawMessage
		if err := json.Unmarshal(in, &all); err != nil {
			t.Fatalf("encoding/json rejects accepted frame %q: %v", in, err)
		}
		for _, f := range m.Extra {
			if !bytes.Equal(all[f.Name], f.Value) {
				t.Fatalf("member %q: %q, encoding/json %q", f.Name, f.Value, all[f.Name])
			}
		}
		compareKnownWithEncodingJSON(t, m, all)
	})
}

// compareKnownWithEncodingJSON checks that the string, list and raw fields
// Decode read are what encoding/json reads from the same members.
func compareKnownWithEncodingJSON(t *testing.T, m *Message, all map[string]json.RawMessage) {
	strs := map[string]string{
		"type": string(m.Type), "messageId": m.MessageID, "inReplyTo": m.InReplyTo,
		"originInstanceId": m.OriginInstanceID, "sourceInstanceId": m.SourceInstanceID,
		"clusterGroupId": m.ClusterGroupID, "traceparent": m.TraceParent, "tracestate": m.TraceState,
		"key": m.Key, "command": m.Command, "code": m.Code, "error": m.Error,
		"instanceId": m.InstanceID, "role": m.Role,
	}
	for name, got := range strs {
		var want string
		if r, ok := all[name]; ok && json.Unmarshal(r, &want) != nil {
			t.Fatalf("%s: encoding/json cannot read %q as a string", name, r)
		}
		if got != want {
			t.Fatalf("%s: Decode %q, encoding/json %q", name, got, want)
		}
	}
	lists := map[string][]string{"messagePath": m.MessagePath, "targetedTags": m.TargetedTags, "tags": m.Tags}
	for name, got := range lists {
		var want []string
		if r, ok := all[name]; ok && json.Unmarshal(r, &want) != nil {
			t.Fatalf("%s: encoding/json cannot read %q as strings", name, r)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: Decode %q, encoding/json %q", name, got, want)
		}
	}
	raws := map[string]json.RawMessage{"value": m.Value, "args": m.Args, "result": m.Result}
	for name, got := range raws {
		if !bytes.Equal(got, all[name]) {
			t.Fatalf("%s: Decode %q, encoding/json %q", name, got, all[name])
		}
	}
}
