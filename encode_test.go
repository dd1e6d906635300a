package slipstream

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestEncodeOrderAndOmission(t *testing.T) {
	m := &Message{
		Acks: boolp(false), Role: RolePeer, Tags: []string{"t"}, InstanceID: "i", Protocol: 1,
		Error: "e", Code: "c", Result: raw(`1`), Args: raw(`{}`), Command: "cmd", Found: boolp(true),
		Value: raw(`null`), Key: "k", TraceState: "ts", TraceParent: "tp", Timestamp: 5,
		TargetedTags: []string{}, MessagePath: []string{"a", "b"}, ClusterGroupID: "g",
		SourceInstanceID: "s", OriginInstanceID: "o", InReplyTo: "r", MessageID: "m", Type: TypeGK,
		Extra: []Field{{"z", raw(`0`)}, {"key", raw(`"dup"`)}, {"empty", nil}, {"a", raw(` [ ] `)}},
	}
	want := `{"type":"GK","messageId":"m","inReplyTo":"r","originInstanceId":"o","sourceInstanceId":"s",` +
		`"clusterGroupId":"g","messagePath":["a","b"],"targetedTags":[],"timestamp":5,"traceparent":"tp",` +
		`"tracestate":"ts","key":"k","value":null,"found":true,"command":"cmd","args":{},"result":1,` +
		`"code":"c","error":"e","protocol":1,"instanceId":"i","tags":["t"],"role":"peer","acks":false,` +
		`"z":0,"a": [ ] }`
	if got := string(Encode(m)); got != want {
		t.Fatalf("Encode:\n got %s\nwant %s", got, want)
	}
	if got := string(Encode(&Message{})); got != `{}` {
		t.Fatalf("empty message: %s", got)
	}
	if got := string(AppendEncode([]byte("prefix:"), &Message{Type: TypeACK, MessageID: "x"})); got != `prefix:{"type":"ACK","messageId":"x"}` {
		t.Fatalf("AppendEncode: %s", got)
	}
}

func TestEncodeStringsLikeEncodingJSON(t *testing.T) {
	cases := []string{
		"", "plain", `q"b\s`, "\x00\x01\x1f\x7f", "\b\f\n\r\t", "<>&", "é€😀",
		"\u2028\u2029", "\xff", "a\xc3", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ok\xe2\x82",
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		cases = append(cases, randString(r, true))
	}
	for _, s := range cases {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
		if got := appendString(nil, s); string(got) != strings.TrimSuffix(want.String(), "\n") {
			t.Fatalf("appendString(%q) = %s, want %s", s, got, want.String())
		}
	}
}

// randString returns a short string mixing ASCII, escapes, multi-byte runes
// and, if invalid, bytes that are not UTF-8.
func randString(r *rand.Rand, invalid bool) string {
	pieces := []string{"a", "Z", "0", "-", ":", " ", `"`, `\`, "/", "\n", "\t", "\x00", "\x1f", "é", "€", "😀", "\u2028", "<", "&"}
	if invalid {
		pieces = append(pieces, "\xff", "\xc3", "\xed\xa0\x80")
	}
	var b strings.Builder
	for range r.IntN(12) {
		b.WriteString(pieces[r.IntN(len(pieces))])
	}
	return b.String()
}

// randRaw returns a random valid JSON value with random insignificant space.
func randRaw(r *rand.Rand, depth int) string {
	sp := func() string { return []string{"", "", " ", "\n\t", "  "}[r.IntN(5)] }
	switch k := r.IntN(8); {
	case k == 0 && depth < 3:
		var parts []string
		for range r.IntN(4) {
			parts = append(parts, sp()+randRaw(r, depth+1)+sp())
		}
		return "[" + strings.Join(parts, ",") + "]"
	case k == 1 && depth < 3:
		var parts []string
		for i := range r.IntN(4) {
			parts = append(parts, sp()+`"k`+strconv.Itoa(i)+`"`+sp()+":"+sp()+randRaw(r, depth+1))
		}
		return "{" + strings.Join(parts, ",") + sp() + "}"
	case k == 2:
		return []string{"true", "false", "null"}[r.IntN(3)]
	case k == 3:
		return []string{"0", "-1", "2.50e3", "1E400", "-0.0", "123456789012345678901234567890"}[r.IntN(6)]
	case k == 4:
		return `"\u00e9\n\"\/\ud83d\ude00"`
	default:
		return string(appendString(nil, randString(r, false)))
	}
}

func randList(r *rand.Rand) []string {
	if r.IntN(3) == 0 {
		return nil
	}
	l := make([]string, r.IntN(4))
	for i := range l {
		l[i] = randString(r, false) + "x"
	}
	return l
}

func randMessage(r *rand.Rand) *Message {
	s := func() string {
		if r.IntN(2) == 0 {
			return ""
		}
		return randString(r, false)
	}
	rawOpt := func() json.RawMessage {
		if r.IntN(2) == 0 {
			return nil
		}
		return raw(randRaw(r, 0))
	}
	boolOpt := func() *bool {
		if r.IntN(3) == 0 {
			return nil
		}
		return boolp(r.IntN(2) == 0)
	}
	types := []Type{TypeSK, TypeSA, TypeSW, TypeGK, TypeGA, TypeGW, TypeCMD, TypeACK, TypeHELLO, TypeERR, "X-custom", ""}
	m := &Message{
		Type: types[r.IntN(len(types))], MessageID: NewMessageID(), OriginInstanceID: s(), SourceInstanceID: s(),
		MessagePath: randList(r), TargetedTags: randList(r), ClusterGroupID: s(), Timestamp: r.Int64N(2) * r.Int64(),
		TraceParent: s(), TraceState: s(), Key: s(), Value: rawOpt(), Found: boolOpt(), Command: s(),
		Args: rawOpt(), Result: rawOpt(), InReplyTo: s(), Code: s(), Error: s(), Protocol: r.IntN(3),
		InstanceID: s(), Tags: randList(r), Role: s(), Acks: boolOpt(),
	}
	for i := range r.IntN(4) {
		m.Extra = append(m.Extra, Field{Name: s() + "_" + strconv.Itoa(i), Value: raw(randRaw(r, 0))})
	}
	return m
}

// TestRoundTrip checks Decode(Encode(m)) == m, and that encoding/json reads
// Encode's output as the same values.
func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 5000 {
		m := randMessage(r)
		out := Encode(m)
		if !json.Valid(out) {
			t.Fatalf("invalid JSON: %s", out)
		}
		got, err := Decode(out, nil)
		if err != nil {
			t.Fatalf("Decode(%s): %v", out, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("round trip:\n got %#v\nwant %#v\njson %s", got, m, out)
		}
		if again := Encode(got); !bytes.Equal(again, out) {
			t.Fatalf("second encoding differs:\n%s\n%s", out, again)
		}
		compareWithEncodingJSON(t, m, out)
	}
}

func compareWithEncodingJSON(t *testing.T, m *Message, out []byte) {
	t.Helper()
	var std struct {
		Type             string          `json:"type"`
		MessageID        string          `json:"messageId"`
		OriginInstanceID string          `json:"originInstanceId"`
		SourceInstanceID string          `json:"sourceInstanceId"`
		MessagePath      []string        `json:"messagePath"`
		TargetedTags     []string        `json:"targetedTags"`
		ClusterGroupID   string          `json:"clusterGroupId"`
		Timestamp        int64           `json:"timestamp"`
		TraceParent      string          `json:"traceparent"`
		TraceState       string          `json:"tracestate"`
		Key              string          `json:"key"`
		Value            json.RawMessage `json:"value"`
		Found            *bool           `json:"found"`
		Command          string          `json:"command"`
		Args             json.RawMessage `json:"args"`
		Result           json.RawMessage `json:"result"`
		InReplyTo        string          `json:"inReplyTo"`
		Code             string          `json:"code"`
		Error            string          `json:"error"`
		Protocol         int             `json:"protocol"`
		InstanceID       string          `json:"instanceId"`
		Tags             []string        `json:"tags"`
		Role             string          `json:"role"`
		Acks             *bool           `json:"acks"`
	}
	if err := json.Unmarshal(out, &std); err != nil {
		t.Fatalf("encoding/json: %v", err)
	}
	want := *m
	want.Extra = nil
	got := Message{Type: Type(std.Type), MessageID: std.MessageID, OriginInstanceID: std.OriginInstanceID,
		SourceInstanceID: std.SourceInstanceID, MessagePath: std.MessagePath, TargetedTags: std.TargetedTags,
		ClusterGroupID: std.ClusterGroupID, Timestamp: std.Timestamp, TraceParent: std.TraceParent,
		TraceState: std.TraceState, Key: std.Key, Value: std.Value, Found: std.Found, Command: std.Command,
		Args: std.Args, Result: std.Result, InReplyTo: std.InReplyTo, Code: std.Code, Error: std.Error,
		Protocol: std.Protocol, InstanceID: std.InstanceID, Tags: std.Tags, Role: std.Role, Acks: std.Acks}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("encoding/json reads\n%#v\nwant\n%#v\nfrom %s", got, want, out)
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(out, &all); err != nil {
		t.Fatal(err)
	}
	for _, f := range m.Extra {
		if !bytes.Equal(all[f.Name], bytes.TrimSpace(f.Value)) {
			t.Fatalf("member %q: encoding/json reads %s, want %s", f.Name, all[f.Name], f.Value)
		}
	}
}

func TestEncodeInvalidUTF8(t *testing.T) {
	m := &Message{Type: TypeSK, Key: "a\xffb", Extra: []Field{{"n\xc3", raw("1")}}}
	out := Encode(m)
	if string(out) != `{"type":"SK","key":"a\ufffdb","n\ufffd":1}` || !utf8.Valid(out) {
		t.Fatalf("Encode = %s", out)
	}
	got, err := Decode(out, nil)
	if err != nil || got.Key != "a\uFFFDb" {
		t.Fatalf("Decode = %+v, %v", got, err)
	}
}
