package slipstream

import (
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func boolp(b bool) *bool { return &b }

func raw(s string) json.RawMessage { return json.RawMessage(s) }

// protocolExamples are the frames of PROTOCOL.md, verbatim, plus one of each
// remaining type written the same way.
var protocolExamples = []struct {
	name string
	in   string
	want Message
}{
	{"ACK", "{\"type\":\"ACK\",\"messageId\":\"msg-abc123\",\"clusterGroupId\":\"cluster-1\",\n \"originInstanceId\":\"aws-1\",\"sourceInstanceId\":\"aws-1\",\"messagePath\":[\"aws-1\"]}",
		Message{Type: TypeACK, MessageID: "msg-abc123", ClusterGroupID: "cluster-1", OriginInstanceID: "aws-1", SourceInstanceID: "aws-1", MessagePath: []string{"aws-1"}}},
	{"HELLO", `{"type":"HELLO","protocol":1,"instanceId":"azure-1","clusterGroupId":"cluster-2","tags":["azure","production"],"role":"peer","acks":true}`,
		Message{Type: TypeHELLO, Protocol: 1, InstanceID: "azure-1", ClusterGroupID: "cluster-2", Tags: []string{"azure", "production"}, Role: RolePeer, Acks: boolp(true)}},
	{"ERR", `{"type":"ERR","messageId":"msg-1","code":"invalid","error":"SA value must be an array"}`,
		Message{Type: TypeERR, MessageID: "msg-1", Code: CodeInvalid, Error: "SA value must be an array"}},
	{"SK", `{"type":"SK","key":"order:123","value":{"status":"paid"},"messageId":"m1"}`,
		Message{Type: TypeSK, Key: "order:123", Value: raw(`{"status":"paid"}`), MessageID: "m1"}},
	{"SK delete", `{"type":"SK","key":"order:123","value":null}`,
		Message{Type: TypeSK, Key: "order:123", Value: raw(`null`)}},
	{"SK forwarded", `{"type":"SK","messageId":"m1","originInstanceId":"pi-aws","sourceInstanceId":"azure-1","clusterGroupId":"singleton","messagePath":["aws-1","azure-1"],"targetedTags":["production"],"timestamp":1700000000000,"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"vendor=x","key":"order:123","value":{"status":"paid"}}`,
		Message{Type: TypeSK, MessageID: "m1", OriginInstanceID: "pi-aws", SourceInstanceID: "azure-1", ClusterGroupID: "singleton",
			MessagePath: []string{"aws-1", "azure-1"}, TargetedTags: []string{"production"}, Timestamp: 1700000000000,
			TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", TraceState: "vendor=x",
			Key: "order:123", Value: raw(`{"status":"paid"}`)}},
	{"SA", `{"type":"SA","key":"acquirers","value":["acq-a","acq-b"]}`,
		Message{Type: TypeSA, Key: "acquirers", Value: raw(`["acq-a","acq-b"]`)}},
	{"SW", `{"type":"SW","key":"split","value":{"acq-a":70,"acq-b":30}}`,
		Message{Type: TypeSW, Key: "split", Value: raw(`{"acq-a":70,"acq-b":30}`)}},
	{"GK", `{"type":"GK","messageId":"q1","key":"order:123","targetedTags":["aws"]}`,
		Message{Type: TypeGK, MessageID: "q1", Key: "order:123", TargetedTags: []string{"aws"}}},
	{"GK reply", `{"type":"GK","messageId":"r1","inReplyTo":"q1","originInstanceId":"aws-1","key":"order:123","value":{"status":"paid"},"found":true}`,
		Message{Type: TypeGK, MessageID: "r1", InReplyTo: "q1", OriginInstanceID: "aws-1", Key: "order:123", Value: raw(`{"status":"paid"}`), Found: boolp(true)}},
	{"GA reply not found", `{"type":"GA","messageId":"r2","inReplyTo":"q2","key":"acquirers","found":false}`,
		Message{Type: TypeGA, MessageID: "r2", InReplyTo: "q2", Key: "acquirers", Found: boolp(false)}},
	{"GW", `{"type":"GW","key":"split"}`, Message{Type: TypeGW, Key: "split"}},
	{"CMD", `{"type":"CMD","messageId":"c1","command":"slipstream.set_log_level","args":{"level":"debug"}}`,
		Message{Type: TypeCMD, MessageID: "c1", Command: "slipstream.set_log_level", Args: raw(`{"level":"debug"}`)}},
	{"CMD reply", `{"type":"CMD","messageId":"c2","inReplyTo":"c1","result":{"pong":true}}`,
		Message{Type: TypeCMD, MessageID: "c2", InReplyTo: "c1", Result: raw(`{"pong":true}`)}},
	{"CMD error reply", `{"type":"CMD","messageId":"c3","inReplyTo":"c1","error":"forbidden"}`,
		Message{Type: TypeCMD, MessageID: "c3", InReplyTo: "c1", Error: "forbidden"}},
	{"HELLO client", `{"type":"HELLO","instanceId":"pi-aws","role":"client","acks":false}`,
		Message{Type: TypeHELLO, InstanceID: "pi-aws", Role: RoleClient, Acks: boolp(false)}},
}

func TestDecodeProtocolExamples(t *testing.T) {
	for _, tc := range protocolExamples {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Decode([]byte(tc.in), nil)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(*m, tc.want) {
				t.Fatalf("Decode:\n got %#v\nwant %#v", *m, tc.want)
			}
			if err := m.Validate(nil); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			// Re-encoding gives the same JSON value (member order may differ).
			var a, b any
			if err := json.Unmarshal([]byte(tc.in), &a); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(Encode(m), &b); err != nil {
				t.Fatalf("Encode gave invalid JSON: %v", err)
			}
			if !reflect.DeepEqual(a, b) {
				t.Fatalf("re-encoded value differs:\n in %s\nout %s", tc.in, Encode(m))
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct {
		name, in, code, text string
	}{
		{"empty", ``, CodeBadJSON, "one JSON object"},
		{"spaces", "  \n", CodeBadJSON, "one JSON object"},
		{"array", `[1]`, CodeBadJSON, "one JSON object"},
		{"string", `"SK"`, CodeBadJSON, "one JSON object"},
		{"unterminated", `{"type":"SK"`, CodeBadJSON, "unterminated"},
		{"missing colon", `{"type" "SK"}`, CodeBadJSON, "':'"},
		{"missing value", `{"type":}`, CodeBadJSON, "type"},
		{"missing value at end", `{"type":`, CodeBadJSON, "missing value"},
		{"trailing comma", `{"type":"SK",}`, CodeBadJSON, "member name"},
		{"single quotes", `{'type':'SK'}`, CodeBadJSON, "member name"},
		{"trailing data", `{"type":"SK"} x`, CodeBadJSON, "after the JSON object"},
		{"two objects", `{"type":"SK"}{"type":"SK"}`, CodeBadJSON, "after the JSON object"},
		{"bad literal", `{"type":"SK","found":tru}`, CodeBadJSON, "found"},
		{"bad number", `{"type":"SK","x":01}`, CodeBadJSON, "expected ','"},
		{"bad number 2", `{"type":"SK","x":1.}`, CodeBadJSON, "x"},
		{"bad number 3", `{"type":"SK","x":-}`, CodeBadJSON, "x"},
		{"bad number 4", `{"type":"SK","x":1e}`, CodeBadJSON, "x"},
		{"plus number", `{"type":"SK","x":+1}`, CodeBadJSON, "x"},
		{"NaN", `{"type":"SK","x":NaN}`, CodeBadJSON, "x"},
		{"bad escape", `{"type":"S\K"}`, CodeBadJSON, "invalid value"},
		{"bad unicode escape", `{"type":"\u12G4"}`, CodeBadJSON, "invalid value"},
		{"control char", "{\"type\":\"S\nK\"}", CodeBadJSON, "invalid value"},
		{"invalid UTF-8 value", "{\"type\":\"SK\",\"x\":\"\xff\"}", CodeBadJSON, "x"},
		{"invalid UTF-8 name", "{\"\xc3\":1}", CodeBadJSON, "invalid string"},
		{"unclosed nested", `{"type":"SK","x":{"a":[1,2}}`, CodeBadJSON, "x"},
		{"bad json wins over wrong type", `{"type":1,"x":}`, CodeBadJSON, "x"},
		{"type number", `{"type":1}`, CodeInvalid, "type must be a string"},
		{"messageId number", `{"type":"SK","messageId":7}`, CodeInvalid, "messageId must be a string"},
		{"key object", `{"type":"SK","key":{}}`, CodeInvalid, "key must be a string"},
		{"path string", `{"type":"SK","messagePath":"aws-1"}`, CodeInvalid, "messagePath must be an array of strings"},
		{"path numbers", `{"type":"SK","messagePath":["a",1]}`, CodeInvalid, "messagePath must be an array of strings"},
		{"path null entry", `{"type":"SK","messagePath":[null]}`, CodeInvalid, "messagePath must be an array of strings"},
		{"tags object", `{"type":"SK","targetedTags":{"a":1}}`, CodeInvalid, "targetedTags must be an array of strings"},
		{"hello tags", `{"type":"HELLO","tags":"aws"}`, CodeInvalid, "tags must be an array of strings"},
		{"timestamp string", `{"type":"SK","timestamp":"1700000000000"}`, CodeInvalid, "timestamp must be a non-negative integer"},
		{"timestamp fraction", `{"type":"SK","timestamp":1.5}`, CodeInvalid, "timestamp must be a non-negative integer"},
		{"timestamp negative", `{"type":"SK","timestamp":-1}`, CodeInvalid, "timestamp must be a non-negative integer"},
		{"timestamp overflow", `{"type":"SK","timestamp":1e30}`, CodeInvalid, "timestamp must be"},
		{"timestamp tiny", `{"type":"SK","timestamp":1e-3}`, CodeInvalid, "timestamp must be"},
		{"protocol string", `{"type":"HELLO","protocol":"1"}`, CodeInvalid, "protocol must be an integer"},
		{"protocol fraction", `{"type":"HELLO","protocol":1.5}`, CodeInvalid, "protocol must be an integer"},
		{"found string", `{"type":"GK","found":"yes"}`, CodeInvalid, "found must be a boolean"},
		{"acks number", `{"type":"HELLO","acks":1}`, CodeInvalid, "acks must be a boolean"},
		{"duplicate known", `{"type":"SK","type":"SA"}`, CodeInvalid, `duplicate member "type"`},
		{"duplicate escaped known", `{"type":"SK","typ\u0065":"SA"}`, CodeInvalid, `duplicate member "type"`},
		{"duplicate unknown", `{"type":"SK","x":1,"x":1}`, CodeInvalid, `duplicate member "x"`},
		{"duplicate null", `{"type":"SK","key":null,"key":"k"}`, CodeInvalid, `duplicate member "key"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Decode([]byte(tc.in), nil)
			if err == nil {
				t.Fatalf("Decode(%q) = %+v, want error %s", tc.in, m, tc.code)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T is not *Error", err)
			}
			if e.Code != tc.code || !strings.Contains(e.Text, tc.text) {
				t.Fatalf("Decode(%q) = %s %q, want %s containing %q", tc.in, e.Code, e.Text, tc.code, tc.text)
			}
		})
	}
}

func TestDecodeTooLarge(t *testing.T) {
	in := []byte(`{"type":"SK","key":"k","value":"` + strings.Repeat("x", 100) + `"}`)
	_, err := Decode(in, &Limits{MaxFrame: 64})
	if e, ok := err.(*Error); !ok || e.Code != CodeTooLarge {
		t.Fatalf("got %v, want too_large", err)
	}
	if _, err := Decode(in, &Limits{MaxFrame: len(in)}); err != nil {
		t.Fatalf("a frame of exactly MaxFrame bytes: %v", err)
	}
}

func TestDecodeErrorEchoesMessageID(t *testing.T) {
	_, err := Decode([]byte(`{"type":"SA","key":7,"messageId":"m-9"}`), nil)
	e := err.(*Error)
	if e.MessageID != "m-9" || e.Code != CodeInvalid {
		t.Fatalf("got %+v", e)
	}
	f := e.Frame()
	if f.Type != TypeERR || f.MessageID != "m-9" || f.Code != CodeInvalid || f.Error != "key must be a string" {
		t.Fatalf("Frame() = %+v", f)
	}
	// An id that is itself invalid is not echoed.
	long := strings.Repeat("m", DefaultMaxMessageID+1)
	_, err = Decode([]byte(`{"type":"SA","key":7,"messageId":"`+long+`"}`), nil)
	if e := err.(*Error); e.MessageID != "" {
		t.Fatalf("echoed an over-long id")
	}
	// A frame that is not JSON echoes the id only if it was read first.
	_, err = Decode([]byte(`{"messageId":"m-9",`), nil)
	if e := err.(*Error); e.MessageID != "m-9" || e.Code != CodeBadJSON {
		t.Fatalf("got %+v", e)
	}
	_, err = Decode([]byte(`{"x":nul,"messageId":"m-9"}`), nil)
	if e := err.(*Error); e.MessageID != "" || e.Code != CodeBadJSON {
		t.Fatalf("got %+v", e)
	}
}

func TestDecodeKeepsUnknownMembersByteForByte(t *testing.T) {
	in := `{"type":"SK","key":"k","value":1,"x":{ "a" : [1, 2.50e3 ]},"y":"\u00e9"}`
	m, err := Decode([]byte(in), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []Field{{"x", raw(`{ "a" : [1, 2.50e3 ]}`)}, {"y", raw(`"\u00e9"`)}}
	if !reflect.DeepEqual(m.Extra, want) {
		t.Fatalf("Extra = %q", m.Extra)
	}
	if out := string(Encode(m)); out != in {
		t.Fatalf("Encode:\n got %s\nwant %s", out, in)
	}
	// Odd spacing between members is not kept, but every value is.
	in2 := " {\n\t\"z\" : [ {\"deep\":{\"er\":[true,false,null,-0.0e+0,\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\ud83d\\ude00\"]}} ] ,\"type\":\"SK\", \"a\\u0062\" : 1E400 , \"\" : \"\" } \n"
	m, err = Decode([]byte(in2), nil)
	if err != nil {
		t.Fatal(err)
	}
	want = []Field{
		{"z", raw(`[ {"deep":{"er":[true,false,null,-0.0e+0,"\"\\\/\b\f\n\r\t\ud83d\ude00"]}} ]`)},
		{"ab", raw(`1E400`)},
		{"", raw(`""`)},
	}
	if !reflect.DeepEqual(m.Extra, want) {
		t.Fatalf("Extra = %q", m.Extra)
	}
	wantOut := `{"type":"SK","z":[ {"deep":{"er":[true,false,null,-0.0e+0,"\"\\\/\b\f\n\r\t\ud83d\ude00"]}} ],"ab":1E400,"":""}`
	if out := string(Encode(m)); out != wantOut {
		t.Fatalf("Encode:\n got %s\nwant %s", out, wantOut)
	}
}

func TestDecodeNullIsAbsent(t *testing.T) {
	in := `{"type":"CMD","messageId":null,"messagePath":null,"timestamp":null,"found":null,"args":null,"result":null,"command":"c","value":null}`
	m, err := Decode([]byte(in), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Message{Type: TypeCMD, Command: "c", Args: raw("null"), Result: raw("null"), Value: raw("null")}
	if !reflect.DeepEqual(*m, want) {
		t.Fatalf("got %#v", *m)
	}
}

func TestDecodeNilVersusEmpty(t *testing.T) {
	m, err := Decode([]byte(`{"type":"SK","messagePath":[],"targetedTags":[ ]}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.MessagePath == nil || len(m.MessagePath) != 0 || m.TargetedTags == nil || m.Tags != nil {
		t.Fatalf("got %#v", m)
	}
	if out := string(Encode(m)); out != `{"type":"SK","messagePath":[],"targetedTags":[]}` {
		t.Fatalf("Encode = %s", out)
	}
}

func TestDecodeStrings(t *testing.T) {
	cases := map[string]string{
		`"plain"`:              "plain",
		`"caf\u00e9 \"q\" \\"`: `café "q" \`,
		`"\ud83d\ude00"`:       "\U0001F600",
		`"\ud800"`:             "\uFFFD",
		`"\ud800\u0041"`:       "\uFFFDA",
		`"\udc00\ud800\udc00"`: "\uFFFD\U00010000",
		`"a\/b\tc\u0000"`:      "a/b\tc\x00",
		`"é"`:                  "é",
	}
	for in, want := range cases {
		m, err := Decode([]byte(`{"key":`+in+`}`), nil)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		var std string
		if err := json.Unmarshal([]byte(in), &std); err != nil || std != want {
			t.Fatalf("bad test case %s: encoding/json gives %q", in, std)
		}
		if m.Key != want {
			t.Errorf("%s: got %q, want %q", in, m.Key, want)
		}
	}
}

func TestDecodeTimestampForms(t *testing.T) {
	for in, want := range map[string]int64{
		"1700000000000": 1700000000000, "1.7e12": 1700000000000, "17E11": 1700000000000,
		"1700000000000.000": 1700000000000, "170000000000000e-2": 1700000000000, "0": 0, "-0": 0,
		"0.0e5": 0, "9223372036854775807": 9223372036854775807, "9.223372036854775807e18": 9223372036854775807,
	} {
		m, err := Decode([]byte(`{"timestamp":`+in+`}`), nil)
		if err != nil || m.Timestamp != want {
			t.Errorf("timestamp %s: got %v, %v; want %d", in, m, err, want)
		}
	}
	for _, in := range []string{"9223372036854775808", "1.5", "1e19", "123456789012345678901234567890", "15e-1"} {
		if _, err := Decode([]byte(`{"timestamp":`+in+`}`), nil); err == nil {
			t.Errorf("timestamp %s accepted", in)
		}
	}
}

func TestDecodeCopiesInput(t *testing.T) {
	in := []byte(`{"type":"SK","key":"k","value":{"a":1},"x":[1]}`)
	m, err := Decode(in, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := string(Encode(m))
	for i := range in {
		in[i] = ' '
	}
	if after := string(Encode(m)); after != before {
		t.Fatalf("message changed with its input: %s", after)
	}
	// Appending to one raw value must not overwrite the next.
	_ = append(m.Value, 'X', 'X', 'X')
	if string(m.Extra[0].Value) != "[1]" {
		t.Fatalf("raw values overlap")
	}
}

func TestDecodeNesting(t *testing.T) {
	deep := func(n int) []byte {
		return []byte(`{"x":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`)
	}
	if _, err := Decode(deep(maxDepth-1), nil); err != nil {
		t.Fatalf("depth %d: %v", maxDepth, err)
	}
	if json.Valid(deep(maxDepth)) {
		t.Fatal("encoding/json accepts deeper nesting; update maxDepth")
	}
	if _, err := Decode(deep(maxDepth), nil); err == nil || err.(*Error).Code != CodeBadJSON {
		t.Fatalf("depth %d: %v", maxDepth+1, err)
	}
}

func TestDecodeManyUnknownMembers(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"type":"SK"`)
	for i := range 1000 {
		b.WriteString(`,"f` + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + `_` + strconv.Itoa(i) + `":` + strconv.Itoa(i))
	}
	m, err := Decode([]byte(b.String()+`}`), nil)
	if err != nil || len(m.Extra) != 1000 {
		t.Fatalf("got %v", err)
	}
	if string(Encode(m)) != b.String()+`}` {
		t.Fatal("re-encoding differs")
	}
	_, err = Decode([]byte(b.String()+`,"fa_0":0}`), nil)
	if err == nil || !strings.Contains(err.Error(), `duplicate member "fa_0"`) {
		t.Fatalf("duplicate after the map took over: %v", err)
	}
}
