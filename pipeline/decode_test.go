package pipeline

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

type allInner struct {
	Name string `hcl:"name,optional"`
	N    int    `hcl:"n,optional"`
}

type allItem struct {
	Key   string   `hcl:"key,label"`
	Sub   string   `hcl:"sub,label"`
	Value float64  `hcl:"value,optional"`
	Inner allInner `hcl:"inner,block"`
}

type allTypes struct {
	S     string        `hcl:"s,optional" doc:"a string"`
	B     bool          `hcl:"b,optional"`
	I     int           `hcl:"i,optional"`
	I64   int64         `hcl:"i64,optional"`
	F     float64       `hcl:"f,optional"`
	L     []string      `hcl:"l,optional"`
	D     time.Duration `hcl:"d,optional"`
	Req   string        `hcl:"req"`
	Ptr   *allInner     `hcl:"ptr,block"`
	Val   allInner      `hcl:"val,block"`
	Items []allItem     `hcl:"item,block"`
	PItem []*allInner   `hcl:"pitem,block"`

	untagged int //nolint:unused // ignored by the decoder
	Skipped  string
}

// rule lets a test choose what allTypes.Validate returns.
var rule func(*allTypes) error

func (a *allTypes) Validate() error {
	if rule == nil {
		return nil
	}
	return rule(a)
}

func decodeAll(t *testing.T, src string, target *allTypes) string {
	t.Helper()
	file, diags := hclsyntax.ParseConfig([]byte(src), "d.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatalf("parse: %s", FormatDiagnostics(diags))
	}
	return FormatDiagnostics(DecodeBody(file.Body, nil, target))
}

func TestDecodeAllTypes(t *testing.T) {
	withEnv(t, map[string]string{"N": "42"})
	got := &allTypes{S: "default", I: 1, L: []string{"x"}, D: time.Second, Val: allInner{Name: "keep", N: 9}}
	out := decodeAll(t, `
s   = "str"
b   = true
i   = env("N")
i64 = 9007199254740993
f   = 0.25
l   = ["a", "b"]
d   = "1h30m"
req = "r"
ptr {
  name = "p"
}
val {
  n = 3
}
item "k1" "s1" {
  value = 1.5
  inner { n = 1 }
}
item "k2" "s2" {}
pitem {}
pitem { n = 2 }
`, got)
	if out != "" {
		t.Fatalf("diagnostics:\n%s", out)
	}
	want := &allTypes{
		S: "str", B: true, I: 42, I64: 9007199254740993, F: 0.25, L: []string{"a", "b"},
		D: 90 * time.Minute, Req: "r",
		Ptr: &allInner{Name: "p"},
		Val: allInner{Name: "keep", N: 3},
		Items: []allItem{
			{Key: "k1", Sub: "s1", Value: 1.5, Inner: allInner{N: 1}},
			{Key: "k2", Sub: "s2"},
		},
		PItem: []*allInner{{}, {N: 2}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

func TestDecodeNullKeepsDefault(t *testing.T) {
	got := &allTypes{S: "default", D: time.Second}
	if out := decodeAll(t, "s = null\nd = null\nreq = \"r\"\n", got); out != "" {
		t.Fatal(out)
	}
	if got.S != "default" || got.D != time.Second {
		t.Errorf("null replaced the defaults: %+v", got)
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct {
		src, want string
	}{
		{`b = "yes"`, `d.hcl:1:5: Invalid value for "b"; expected a bool, got a string`},
		{`b = 1`, `d.hcl:1:5: Invalid value for "b"; expected a bool, got a number`},
		{`i = 9223372036854775808`, `d.hcl:1:5: Invalid value for "i"; number 9223372036854775808 is out of range`},
		{`i64 = "x"`, `d.hcl:1:7: Invalid value for "i64"; expected a number, got a string`},
		{`f = [1]`, `d.hcl:1:5: Invalid value for "f"; expected a number, got a list`},
		{`s = { a = 1 }`, `d.hcl:1:5: Invalid value for "s"; expected a string, got an object`},
		{`l = ["a", 2]`, `d.hcl:1:5: Invalid value for "l"; expected a list of strings, element 2 is a number`},
		{`l = ["a", null]`, `d.hcl:1:5: Invalid value for "l"; expected a list of strings, element 2 is null`},
		{`d = "5"`, `d.hcl:1:5: Invalid value for "d"; time: invalid duration "5": missing unit (units: ns, us, ms, s, m, h)`},
		{`d = "soon"`, `d.hcl:1:5: Invalid value for "d"; time: invalid duration "soon" (units: ns, us, ms, s, m, h)`},
		{`d = "-5m"`, `d.hcl:1:5: Invalid value for "d"; duration "-5m" must not be negative`},
		{`s = nope`, `d.hcl:1:5: Variables not allowed`},
		{`s = nope("x")`, `d.hcl:1:5: Call to unknown function`},
		{`s = env("")`, `d.hcl:1:11: Invalid function argument; Invalid value for "name" parameter: the variable name must not be empty.`},
		{`s = env(null)`, `d.hcl:1:9: Invalid function argument; Invalid value for "name" parameter: argument must not be null.`},
		{"ptr {}\nptr {}", `d.hcl:2:1: Duplicate ptr block; previously defined at d.hcl:1:1`},
		{`item "a" {}`, `d.hcl:1:10: Missing sub for item; All item blocks must have 2 labels (key, sub).`},
		{`item "a" "b" {}` + "\n" + `item "a" "b" {}`, `d.hcl:2:1: Duplicate item "a" "b"; previously defined at d.hcl:1:1`},
		{`ptr = {}`, `d.hcl:1:1: Unsupported argument; An argument named "ptr" is not expected here. Did you mean to define a block of type "ptr"?`},
		{`s {}`, `d.hcl:1:1: Unsupported block type; Blocks of type "s" are not expected here. Did you mean to define argument "s"? If so, use the equals sign to assign it a value.`},
	}
	for _, tc := range cases {
		out := decodeAll(t, "req = \"r\"\n"+tc.src, &allTypes{})
		// The source has req on line 1: shift the expected line by one.
		want := strings.Replace(strings.Replace(tc.want, "d.hcl:2:", "d.hcl:3:", 1), "d.hcl:1:", "d.hcl:2:", 1)
		want = strings.Replace(want, "at d.hcl:1:1", "at d.hcl:2:1", 1)
		if !strings.Contains(out, want) {
			t.Errorf("%s:\nwant %s\n got %s", tc.src, want, out)
		}
	}
}

func TestValidatePlacement(t *testing.T) {
	t.Cleanup(func() { rule = nil })
	src := `req = "r"
s = "bad"
item "a" "b" {
  inner {
    n = 5
  }
}
item "c" "d" {
  value = 2
}
`
	cases := []struct {
		err  error
		want string
	}{
		{&FieldError{Field: "s", Err: errors.New("no")}, `d.hcl:2:5: Invalid value for "s"; no`},
		{&FieldError{Field: "i", Err: errors.New("unset")}, `d.hcl:1:1: Invalid value for "i"; unset`},
		{&FieldError{Field: "item.inner.n", Err: errors.New("deep")}, `d.hcl:5:9: Invalid value for "item.inner.n"; deep`},
		{&FieldError{Field: "item[1].value", Err: errors.New("second")}, `d.hcl:9:11: Invalid value for "item[1].value"; second`},
		{&FieldError{Field: "item[1].inner", Err: errors.New("absent block")}, `d.hcl:8:1: Invalid value for "item[1].inner"; absent block`},
		{&FieldError{Field: "item[7].value", Err: errors.New("out of range")}, `d.hcl:1:1: Invalid value for "item[7].value"; out of range`},
		{&FieldError{Field: "ptr.name", Err: errors.New("no ptr")}, `d.hcl:1:1: Invalid value for "ptr.name"; no ptr`},
		{errors.New("whole"), `d.hcl:1:1: Invalid block; whole`},
		{&FieldError{Field: "s", Err: nil}, `d.hcl:2:5: Invalid value for "s"; invalid`},
	}
	for _, tc := range cases {
		rule = func(*allTypes) error { return tc.err }
		// DecodeBody reports non-field errors at body.MissingItemRange(),
		// which is the file's start for a whole file's body.
		out := decodeAll(t, src, &allTypes{})
		if !strings.Contains(out, tc.want) || strings.Count(out, "\n") != 1 {
			t.Errorf("%v:\nwant %s\n got %s", tc.err, tc.want, out)
		}
	}

	// A FieldError about a value already reported is not repeated.
	rule = func(*allTypes) error { return &FieldError{Field: "s", Err: errors.New("again")} }
	if out := decodeAll(t, "req = \"r\"\ns = 1\n", &allTypes{}); strings.Count(out, "\n") != 1 {
		t.Errorf("want one diagnostic, got:\n%s", out)
	}
}

func TestCheckConfigType(t *testing.T) {
	type badType struct {
		M map[string]string `hcl:"m,optional"`
	}
	type badOpt struct {
		S string `hcl:"s,remain"`
	}
	type badName struct {
		S string `hcl:"not valid,optional"`
	}
	type dupName struct {
		A string `hcl:"a,optional"`
		B string `hcl:"a,optional"`
	}
	type topLabel struct {
		L string `hcl:"l,label"`
	}
	type intLabel struct {
		L int `hcl:"l,label"`
	}
	type badBlock struct {
		B []string `hcl:"b,block"`
	}
	type recursive struct {
		R *recursive `hcl:"r,block"`
	}
	type named string
	type namedType struct {
		N named `hcl:"n,optional"`
	}
	type unexported struct {
		s string `hcl:"s,optional"`
	}
	_ = unexported{}.s
	for _, tc := range []struct {
		v    any
		want string
	}{
		{nil, "NewConfig must return a non-nil pointer to a struct"},
		{allTypes{}, "NewConfig must return a non-nil pointer to a struct"},
		{(*allTypes)(nil), "NewConfig must return a non-nil pointer to a struct"},
		{&badType{}, "unsupported attribute type map[string]string"},
		{&badOpt{}, `unknown hcl tag option "remain"`},
		{&badName{}, `invalid hcl name "not valid"`},
		{&dupName{}, `hcl name "a" used twice`},
		{&topLabel{}, "label fields are only allowed in nested block structs"},
		{&intLabel{}, "label field must be a string"},
		{&badBlock{}, "block field must be a struct"},
		{&recursive{}, "recursive block structs are not supported"},
		{&namedType{}, "unsupported attribute type"},
		{&unexported{}, "hcl-tagged field must be exported"},
		{&allTypes{}, ""},
		{&noConfig{}, ""},
	} {
		err := checkConfigType(tc.v)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%T: unexpected error %v", tc.v, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%T: want error containing %q, got %v", tc.v, tc.want, err)
		}
	}
}

func TestRegisterPanics(t *testing.T) {
	type bad struct {
		M map[string]int `hcl:"m,optional"`
	}
	ok := Kind{Class: ClassStage, Name: "x", NewConfig: func() any { return &noConfig{} }, Build: noBuild}
	for name, k := range map[string]Kind{
		"no name":      {Class: ClassStage, NewConfig: ok.NewConfig, Build: noBuild},
		"no build":     {Class: ClassStage, Name: "x", NewConfig: ok.NewConfig},
		"bad class":    {Class: "filter", Name: "x", NewConfig: ok.NewConfig, Build: noBuild},
		"bad config":   {Class: ClassStage, Name: "x", NewConfig: func() any { return &bad{} }, Build: noBuild},
		"twice":        ok,
		"value config": {Class: ClassStage, Name: "x", NewConfig: func() any { return noConfig{} }, Build: noBuild},
	} {
		r := NewKindRegistry()
		if name == "twice" {
			r.Register(ok)
		}
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: Register did not panic", name)
				}
			}()
			r.Register(k)
		}()
	}
}

func TestRegistry(t *testing.T) {
	r := NewKindRegistry()
	for _, n := range []string{"b", "a"} {
		r.Register(Kind{Class: ClassSink, Name: n, NewConfig: func() any { return &noConfig{} }, Build: noBuild})
	}
	if got := strings.Join(r.KindNames(ClassSink), ","); got != "a,b" {
		t.Errorf("KindNames = %s", got)
	}
	if _, ok := r.Lookup(ClassSink, "a"); !ok {
		t.Error("Lookup a")
	}
	if _, ok := r.Lookup(ClassSource, "a"); ok {
		t.Error("Lookup found a sink as a source")
	}
	if len(r.Kinds(ClassStage)) != 0 {
		t.Error("stage kinds of an empty class")
	}
}

func TestReferenceMarkdown(t *testing.T) {
	md := ReferenceMarkdownFor(testKinds)
	if md != ReferenceMarkdownFor(testKinds) {
		t.Fatal("output is not deterministic")
	}
	for _, want := range []string{
		"## Decisions\n",
		"### `instance`\n",
		"| `id` | string | `\"local-1\"` | this instance's id, unique in the mesh; it goes into messagePath |",
		"| `level` | string | `\"info\"` | debug \\| info \\| warn \\| error |",
		"| `sample_ratio` | number | `1.0` |",
		"| `token` | string | — |",
		"### `source \"websocket_client\" \"NAME\"`\n",
		"Block `peer \"ID\"` (repeated, each with a distinct label): a peer to dial\n",
		"| `url` | string | required | ws:// or wss:// URL of the peer's websocket_server |",
		"Block `peer.tls` (at most one)\n",
		"Block `retry` (at most one)\n",
		"| `max_interval` | duration | `\"1m\"` |",
		"| `cooldown` | duration | `\"5m\"` |",
		"| `attempts` | whole number | `10` | 0 = never give up |",
		"### `stage \"dedup\"`\n\nDrops messages seen within the window.\n",
		"| `window` | duration | `\"24h\"` | how long a message id is remembered |",
		"### `stage \"ack\"`\n\nThe ack stage.\n\nNo attributes.\n",
		"```hcl\nstage \"dedup\" {\n  window = \"24h\"\n}\n```\n",
		"| `key_prefix` | string | `\"slipstream:\"` |",
		"| `allow_commands` | bool | `false` |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("reference lacks %q", want)
		}
	}
	// Sections in a fixed order: fixed blocks, sources, stages, sinks.
	order := []string{"### `instance`", "### `admin`", "### `log`", "### `tracing`", "## Sources", "### `source \"websocket_client\"", "### `source \"websocket_server\"", "## Stages", "`stage \"decode\"`", "`stage \"loop_check\"`", "`stage \"dedup\"`", "`stage \"tag_filter\"`", "`stage \"persist\"`", "`stage \"ack\"`", "`stage \"state\"`", "`stage \"command\"`", "`stage \"fanout\"`", "## Sinks", "`sink \"redis\"", "`sink \"websocket\""}
	last := -1
	for _, s := range order {
		i := strings.Index(md, s)
		if i <= last {
			t.Errorf("%q out of order", s)
		}
		last = i
	}
	if def := ReferenceMarkdown(); !strings.Contains(def, "## Decisions") || !strings.Contains(def, "### `tracing`") {
		t.Error("ReferenceMarkdown of DefaultKinds lacks the fixed parts")
	}
}

func TestDurationText(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", time.Second: "1s", 90 * time.Second: "1m30s", 5 * time.Minute: "5m",
		24 * time.Hour: "24h", 90 * time.Minute: "1h30m", 1500 * time.Millisecond: "1.5s", time.Hour + time.Second: "1h0m1s",
	} {
		if got := durationText(d); got != want {
			t.Errorf("durationText(%v) = %s, want %s", d, got, want)
		}
		if back, err := time.ParseDuration(durationText(d)); err != nil || back != d {
			t.Errorf("durationText(%v) does not parse back: %v %v", d, back, err)
		}
	}
}

func TestDecodeDoesNotShareDefaults(t *testing.T) {
	shared := &allInner{Name: "shared"}
	a := &allTypes{Ptr: shared}
	if out := decodeAll(t, "req = \"r\"\nptr {\n  n = 1\n}\n", a); out != "" {
		t.Fatal(out)
	}
	if *shared != (allInner{Name: "shared"}) || *a.Ptr != (allInner{Name: "shared", N: 1}) {
		t.Errorf("shared default = %+v, decoded = %+v", shared, a.Ptr)
	}
}
