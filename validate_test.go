package slipstream

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	list := func(n int) string { return `[` + strings.TrimSuffix(strings.Repeat(`"t",`, n), ",") + `]` }
	cases := []struct {
		name, in, code, text string // code "" means valid
	}{
		{"SK", `{"type":"SK","key":"k","value":1}`, "", ""},
		{"SK delete", `{"type":"SK","key":"k","value":null}`, "", ""},
		{"SK no key", `{"type":"SK","value":1}`, CodeInvalid, "SK key is required"},
		{"SK empty key", `{"type":"SK","key":"","value":1}`, CodeInvalid, "SK key is required"},
		{"SK no value", `{"type":"SK","key":"k"}`, CodeInvalid, "SK value is required"},
		{"SA", `{"type":"SA","key":"k","value":[]}`, "", ""},
		{"SA object", `{"type":"SA","key":"k","value":{}}`, CodeInvalid, "SA value must be an array"},
		{"SA null", `{"type":"SA","key":"k","value":null}`, CodeInvalid, "SA value must be an array"},
		{"SA missing", `{"type":"SA","key":"k"}`, CodeInvalid, "SA value must be an array"},
		{"SW", `{"type":"SW","key":"k","value":{"acq-a":70,"acq-b":30.5,"c":0,"d":-0,"e":1e-400}}`, "", ""},
		{"SW empty", `{"type":"SW","key":"k","value":{}}`, "", ""},
		{"SW negative", `{"type":"SW","key":"k","value":{"acq-a":70,"acq-b":-30}}`, CodeInvalid, `SW weight "acq-b" must be >= 0`},
		{"SW NaN string", `{"type":"SW","key":"k","value":{"a":"NaN"}}`, CodeInvalid, `SW weight "a" must be a number`},
		{"SW number string", `{"type":"SW","key":"k","value":{"a":"70"}}`, CodeInvalid, `SW weight "a" must be a number`},
		{"SW null weight", `{"type":"SW","key":"k","value":{"a":null}}`, CodeInvalid, `SW weight "a" must be a number`},
		{"SW infinite", `{"type":"SW","key":"k","value":{"a":1e400}}`, CodeInvalid, `SW weight "a" must be finite`},
		{"SW array", `{"type":"SW","key":"k","value":[70,30]}`, CodeInvalid, "SW value must be an object"},
		{"SW number", `{"type":"SW","key":"k","value":70}`, CodeInvalid, "SW value must be an object"},
		{"SW missing", `{"type":"SW","key":"k"}`, CodeInvalid, "SW value must be an object"},
		{"SW duplicate", `{"type":"SW","key":"k","value":{"a":1,"\u0061":2}}`, CodeInvalid, `duplicate member "a"`},
		{"SW escaped name", `{"type":"SW","key":"k","value":{"a\"b":-1}}`, CodeInvalid, `SW weight "a\"b" must be >= 0`},
		{"GK", `{"type":"GK","key":"k"}`, "", ""},
		{"GA no key", `{"type":"GA"}`, CodeInvalid, "GA key is required"},
		{"GW no key", `{"type":"GW","targetedTags":["aws"]}`, CodeInvalid, "GW key is required"},
		{"GK reply", `{"type":"GK","inReplyTo":"q","found":false}`, "", ""},
		{"GA reply", `{"type":"GA","inReplyTo":"q","key":"k","value":[1],"found":true}`, "", ""},
		{"GA reply bad", `{"type":"GA","inReplyTo":"q","key":"k","value":1,"found":true}`, CodeInvalid, "GA reply value must be an array"},
		{"GW reply", `{"type":"GW","inReplyTo":"q","key":"k","value":{"a":1},"found":true}`, "", ""},
		{"GW reply null", `{"type":"GW","inReplyTo":"q","key":"k","value":null,"found":false}`, "", ""},
		{"GW reply bad", `{"type":"GW","inReplyTo":"q","key":"k","value":{"a":-1}}`, CodeInvalid, `GW weight "a" must be >= 0`},
		{"CMD", `{"type":"CMD","command":"slipstream.ping"}`, "", ""},
		{"CMD args", `{"type":"CMD","command":"x","args":{"level":"debug"}}`, "", ""},
		{"CMD null args", `{"type":"CMD","command":"x","args":null}`, "", ""},
		{"CMD no command", `{"type":"CMD","args":{}}`, CodeInvalid, "CMD command is required"},
		{"CMD array args", `{"type":"CMD","command":"x","args":[1]}`, CodeInvalid, "CMD args must be an object"},
		{"CMD reply", `{"type":"CMD","inReplyTo":"c","result":null}`, "", ""},
		{"CMD reply error", `{"type":"CMD","inReplyTo":"c","error":"no"}`, "", ""},
		{"CMD reply empty", `{"type":"CMD","inReplyTo":"c"}`, CodeInvalid, "CMD reply needs result or error"},
		{"ACK", `{"type":"ACK","messageId":"m"}`, "", ""},
		{"ACK no id", `{"type":"ACK","clusterGroupId":"g"}`, CodeInvalid, "ACK messageId is required"},
		{"HELLO", `{"type":"HELLO"}`, "", ""},
		{"HELLO protocol 2", `{"type":"HELLO","protocol":2}`, CodeUnsupported, "protocol version 2 is not supported"},
		{"HELLO protocol -1", `{"type":"HELLO","protocol":-1}`, CodeInvalid, "protocol must be a positive integer"},
		{"HELLO role", `{"type":"HELLO","role":"admin"}`, CodeInvalid, `role must be "peer" or "client"`},
		{"ERR", `{"type":"ERR","code":"invalid"}`, "", ""},
		{"ERR no code", `{"type":"ERR","error":"x"}`, CodeInvalid, "ERR code is required"},
		{"no type", `{"key":"k","value":1}`, CodeInvalid, "type is required"},
		{"unknown type", `{"type":"XX","key":"k"}`, CodeUnsupported, `unsupported type "XX"`},
		{"lower-case type", `{"type":"sk","key":"k","value":1}`, CodeUnsupported, `unsupported type "sk"`},
		{"messageId limit", `{"type":"SK","key":"k","value":1,"messageId":"` + long(129) + `"}`, CodeInvalid, "messageId is longer than 128 bytes"},
		{"messageId at limit", `{"type":"SK","key":"k","value":1,"messageId":"` + long(128) + `"}`, "", ""},
		{"messageId NUL", `{"type":"SK","key":"k","value":1,"messageId":"a\u0000b"}`, CodeInvalid, "messageId must not contain NUL"},
		{"cluster NUL", `{"type":"SK","key":"k","value":1,"clusterGroupId":"\u0000"}`, CodeInvalid, "clusterGroupId must not contain NUL"},
		{"origin too long", `{"type":"SK","key":"k","value":1,"originInstanceId":"` + long(200) + `"}`, CodeInvalid, "originInstanceId is longer"},
		{"instanceId NUL", `{"type":"HELLO","instanceId":"a\u0000"}`, CodeInvalid, "instanceId must not contain NUL"},
		{"key limit", `{"type":"SK","key":"` + long(1025) + `","value":1}`, CodeInvalid, "key is longer than 1024 bytes"},
		{"key at limit", `{"type":"SK","key":"` + long(1024) + `","value":1}`, "", ""},
		{"path limit", `{"type":"SK","key":"k","value":1,"messagePath":` + list(33) + `}`, CodeInvalid, "messagePath has 33 hops; the limit is 32"},
		{"path at limit", `{"type":"SK","key":"k","value":1,"messagePath":` + list(32) + `}`, "", ""},
		{"path empty entry", `{"type":"SK","key":"k","value":1,"messagePath":["a",""]}`, CodeInvalid, "messagePath entries must be non-empty"},
		{"path NUL", `{"type":"SK","key":"k","value":1,"messagePath":["a\u0000"]}`, CodeInvalid, "must not contain NUL"},
		{"tags limit", `{"type":"SK","key":"k","value":1,"targetedTags":` + list(33) + `}`, CodeInvalid, "targetedTags has 33 tags"},
		{"tag too long", `{"type":"SK","key":"k","value":1,"targetedTags":["` + long(65) + `"]}`, CodeInvalid, "is longer than 64 bytes"},
		{"empty tag", `{"type":"HELLO","tags":[""]}`, CodeInvalid, "tags entries must be non-empty"},
		{"empty targeting", `{"type":"SK","key":"k","value":1,"targetedTags":[]}`, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Decode([]byte(tc.in), nil)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			err = m.Validate(nil)
			if tc.code == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Validate = %v, want *Error %s", err, tc.code)
			}
			if e.Code != tc.code || !strings.Contains(e.Text, tc.text) {
				t.Fatalf("Validate = %s %q, want %s containing %q", e.Code, e.Text, tc.code, tc.text)
			}
		})
	}
}

func TestValidateCustomLimits(t *testing.T) {
	m := &Message{Type: TypeSK, MessageID: "abcdef", Key: "key", Value: raw("1"), MessagePath: []string{"a", "b"}}
	lim := &Limits{MaxPath: 1}
	if err := m.Validate(lim); err == nil || !strings.Contains(err.Error(), "limit is 1") {
		t.Fatalf("MaxPath: %v", err)
	}
	lim = &Limits{MaxKey: 2}
	if err := m.Validate(lim); err == nil || !strings.Contains(err.Error(), "key is longer than 2") {
		t.Fatalf("MaxKey: %v", err)
	}
	lim = &Limits{MaxMessageID: 3}
	err := m.Validate(lim)
	if err == nil || err.(*Error).MessageID != "" {
		t.Fatalf("MaxMessageID: %v (an over-long id must not be echoed)", err)
	}
	// Zero fields mean the defaults.
	if err := m.Validate(&Limits{}); err != nil {
		t.Fatal(err)
	}
	if *DefaultLimits() != (Limits{1 << 20, 32, 128, 1024, 32, 64}) {
		t.Fatalf("DefaultLimits = %+v", DefaultLimits())
	}
}

func TestValidateEchoesMessageID(t *testing.T) {
	err := (&Message{Type: TypeSA, MessageID: "m-1", Key: "k", Value: raw("{}")}).Validate(nil)
	e := err.(*Error)
	if e.MessageID != "m-1" || e.Frame().MessageID != "m-1" || e.Frame().Error != "SA value must be an array" {
		t.Fatalf("got %+v", e)
	}
}

func TestValidateBuiltMessages(t *testing.T) {
	if err := NewAck(&Message{Type: TypeSK, MessageID: "m", ClusterGroupID: "g"}, "aws-1").Validate(nil); err != nil {
		t.Fatalf("NewAck: %v", err)
	}
	if err := NewErr("m", CodeInvalid, "x").Validate(nil); err != nil {
		t.Fatalf("NewErr: %v", err)
	}
	if err := (&Message{Type: TypeSK, Key: "k", Value: raw("1"), Timestamp: -5}).Validate(nil); err == nil {
		t.Fatal("negative timestamp accepted")
	}
	if err := (&Message{Type: TypeSK, Key: "k", Value: raw("  [1]")}).Validate(nil); err != nil {
		t.Fatalf("value with leading space: %v", err)
	}
	if err := (&Message{Type: TypeSW, Key: "k", Value: raw(`{"a":1`)}).Validate(nil); err == nil {
		t.Fatal("broken SW value accepted")
	}
}

func TestValidateDeepWeights(t *testing.T) {
	deep := func(n int) []byte {
		return []byte(`{"a":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`)
	}
	for _, n := range []int{maxDepth - 3, maxDepth - 2, maxDepth - 1, maxDepth} {
		err := (&Message{Type: TypeSW, Key: "k", Value: deep(n)}).Validate(nil)
		if err == nil {
			t.Fatalf("depth %d accepted", n)
		}
	}
}
