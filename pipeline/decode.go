package pipeline

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// This file is the reflective body decoder: it decodes an hcl.Body into a
// kind's config struct (see Kind.NewConfig for the tags), reporting every
// problem as a diagnostic at the range it comes from.

// fieldRole says how a tagged struct field is written in HCL.
type fieldRole int

const (
	roleAttr      fieldRole = iota // name = value
	roleBlock                      // at most one block: struct or *struct
	roleBlockList                  // repeated blocks: []struct or []*struct
	roleLabel                      // a label of the block the struct decodes
)

// fieldSpec is one tagged field of a config struct.
type fieldSpec struct {
	Name     string
	Index    int
	Role     fieldRole
	Required bool // attributes tagged `hcl:"name"` or `hcl:"name,attr"`
	Doc      string
	Type     reflect.Type
	Elem     *structSpec // blocks: the block's struct
}

// structSpec is the decoded shape of a config struct.
type structSpec struct {
	Type   reflect.Type
	Fields []*fieldSpec // attributes and blocks, in field order
	Labels []*fieldSpec // label fields, in order
}

var (
	durationType = reflect.TypeOf(time.Duration(0))
	stringsType  = reflect.TypeOf([]string(nil))

	specCache sync.Map // reflect.Type -> *structSpec
)

// checkConfigType reports whether v (from Kind.NewConfig) is a non-nil
// pointer to a struct that the decoder can decode.
func checkConfigType(v any) error {
	rv := reflect.ValueOf(v)
	if !rv.IsValid() || rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("NewConfig must return a non-nil pointer to a struct, got %T", v)
	}
	spec, err := specFor(rv.Elem().Type())
	if err != nil {
		return err
	}
	if len(spec.Labels) > 0 {
		return fmt.Errorf("%s: label fields are only allowed in nested block structs", spec.Type)
	}
	return nil
}

// specFor returns the (cached) spec of struct type t.
func specFor(t reflect.Type) (*structSpec, error) {
	if s, ok := specCache.Load(t); ok {
		return s.(*structSpec), nil
	}
	s, err := buildSpec(t, map[reflect.Type]bool{})
	if err != nil {
		return nil, err
	}
	specCache.Store(t, s)
	return s, nil
}

func buildSpec(t reflect.Type, visiting map[reflect.Type]bool) (*structSpec, error) {
	if visiting[t] {
		return nil, fmt.Errorf("%s: recursive block structs are not supported", t)
	}
	visiting[t] = true
	defer delete(visiting, t)

	spec := &structSpec{Type: t}
	seen := map[string]bool{}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		tag, ok := sf.Tag.Lookup("hcl")
		if !ok {
			continue
		}
		if !sf.IsExported() {
			return nil, fmt.Errorf("%s.%s: hcl-tagged field must be exported", t, sf.Name)
		}
		name, opt, _ := strings.Cut(tag, ",")
		if !hclsyntax.ValidIdentifier(name) {
			return nil, fmt.Errorf("%s.%s: invalid hcl name %q", t, sf.Name, name)
		}
		if seen[name] {
			return nil, fmt.Errorf("%s.%s: hcl name %q used twice", t, sf.Name, name)
		}
		seen[name] = true
		f := &fieldSpec{Name: name, Index: i, Doc: sf.Tag.Get("doc"), Type: sf.Type}
		switch opt {
		case "optional", "attr", "":
			f.Role = roleAttr
			f.Required = opt != "optional"
			if !attrTypeSupported(sf.Type) {
				return nil, fmt.Errorf("%s.%s: unsupported attribute type %s", t, sf.Name, sf.Type)
			}
			spec.Fields = append(spec.Fields, f)
		case "label":
			if sf.Type.Kind() != reflect.String {
				return nil, fmt.Errorf("%s.%s: label field must be a string", t, sf.Name)
			}
			f.Role = roleLabel
			spec.Labels = append(spec.Labels, f)
		case "block":
			et := sf.Type
			f.Role = roleBlock
			if et.Kind() == reflect.Slice {
				f.Role = roleBlockList
				et = et.Elem()
			}
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() != reflect.Struct {
				return nil, fmt.Errorf("%s.%s: block field must be a struct, *struct or []struct, got %s", t, sf.Name, sf.Type)
			}
			elem, err := buildSpec(et, visiting)
			if err != nil {
				return nil, err
			}
			f.Elem = elem
			spec.Fields = append(spec.Fields, f)
		default:
			return nil, fmt.Errorf("%s.%s: unknown hcl tag option %q", t, sf.Name, opt)
		}
	}
	return spec, nil
}

func attrTypeSupported(t reflect.Type) bool {
	if t == durationType || t == stringsType {
		return true
	}
	switch t.Kind() {
	case reflect.String, reflect.Bool, reflect.Int, reflect.Int64, reflect.Float64:
		return t.PkgPath() == "" // named types other than time.Duration are not
	}
	return false
}

// schema is the hcl schema of the struct's attributes and blocks.
func (s *structSpec) schema() *hcl.BodySchema {
	bs := &hcl.BodySchema{}
	for _, f := range s.Fields {
		switch f.Role {
		case roleAttr:
			bs.Attributes = append(bs.Attributes, hcl.AttributeSchema{Name: f.Name, Required: f.Required})
		case roleBlock, roleBlockList:
			var labels []string
			for _, l := range f.Elem.Labels {
				labels = append(labels, l.Name)
			}
			bs.Blocks = append(bs.Blocks, hcl.BlockHeaderSchema{Type: f.Name, LabelNames: labels})
		}
	}
	return bs
}

// bodyRecord remembers what a decoded body held, so that Validate errors can
// be placed at the attribute (or block) they are about.
type bodyRecord struct {
	defRange hcl.Range
	attrs    map[string]*hcl.Attribute
	blocks   map[string][]*bodyRecord
	bad      map[string]bool // attributes already reported (bad value, missing)
}

// rangeOf resolves a FieldError path ("window", "retry.interval",
// "peer[1].url") to the range of the value written there; when it was not
// written, to the innermost block written on the way. bad reports whether
// the attribute has already been reported.
func (r *bodyRecord) rangeOf(path string) (rng hcl.Range, bad bool) {
	segs := strings.Split(path, ".")
	for i, seg := range segs {
		name, idx := seg, 0
		if open := strings.IndexByte(seg, '['); open > 0 && strings.HasSuffix(seg, "]") {
			n, err := strconv.Atoi(seg[open+1 : len(seg)-1])
			if err == nil && n >= 0 {
				name, idx = seg[:open], n
			}
		}
		if i == len(segs)-1 {
			if a := r.attrs[name]; a != nil {
				return a.Expr.Range(), r.bad[name]
			}
			if bs := r.blocks[name]; idx < len(bs) {
				return bs[idx].defRange, false
			}
			return r.defRange, r.bad[name]
		}
		bs := r.blocks[name]
		if idx >= len(bs) {
			return r.defRange, false
		}
		r = bs[idx]
	}
	return r.defRange, false
}

// decoder decodes bodies with one eval context and collects diagnostics.
type decoder struct {
	ectx  *hcl.EvalContext
	diags hcl.Diagnostics
}

// DecodeBody decodes body into target, a pointer to a config struct holding
// its defaults (tags as documented on Kind.NewConfig), evaluating
// expressions in ectx (nil: NewEvalContext()). If target implements
// Validator it is validated; errors that are not about one attribute are
// reported at body.MissingItemRange().
func DecodeBody(body hcl.Body, ectx *hcl.EvalContext, target any) hcl.Diagnostics {
	if ectx == nil {
		ectx = NewEvalContext()
	}
	d := &decoder{ectx: ectx}
	d.decodeTop(body, target, "block", body.MissingItemRange())
	return d.diags
}

// decodeTop decodes body into target (a pointer to a struct), then validates
// it. desc names the block in messages (`stage "dedup"`).
func (d *decoder) decodeTop(body hcl.Body, target any, desc string, defRange hcl.Range) {
	rv := reflect.ValueOf(target)
	if !rv.IsValid() || rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		d.internal(defRange, fmt.Errorf("config target must be a non-nil pointer to a struct, got %T", target))
		return
	}
	spec, err := specFor(rv.Elem().Type())
	if err != nil {
		d.internal(defRange, err)
		return
	}
	d.decodeStruct(body, rv.Elem(), spec, desc, defRange)
}

func (d *decoder) internal(rng hcl.Range, err error) {
	d.diags = append(d.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  "Internal error: undecodable config type",
		Detail:   err.Error(),
		Subject:  rng.Ptr(),
	})
}

// decodeStruct decodes body into the addressable struct v and validates it.
func (d *decoder) decodeStruct(body hcl.Body, v reflect.Value, spec *structSpec, desc string, defRange hcl.Range) *bodyRecord {
	rec := &bodyRecord{
		defRange: defRange,
		attrs:    map[string]*hcl.Attribute{},
		blocks:   map[string][]*bodyRecord{},
		bad:      map[string]bool{},
	}
	content, diags := body.Content(spec.schema())
	d.diags = append(d.diags, diags...)

	for _, f := range spec.Fields {
		fv := v.Field(f.Index)
		switch f.Role {
		case roleAttr:
			attr := content.Attributes[f.Name]
			if attr == nil {
				if f.Required {
					rec.bad[f.Name] = true // hcl reported it missing
				}
				continue
			}
			rec.attrs[f.Name] = attr
			if !d.decodeAttr(attr, fv) {
				rec.bad[f.Name] = true
			}
		case roleBlock:
			var first *hcl.Block
			for _, b := range content.Blocks {
				if b.Type != f.Name {
					continue
				}
				if first != nil {
					d.diags = append(d.diags, duplicateDiag(fmt.Sprintf("Duplicate %s block", f.Name), b.DefRange, first.DefRange))
					continue
				}
				first = b
				target := fv
				if fv.Kind() == reflect.Pointer {
					// Decode into a copy of the default, never into a
					// struct the default may share with other configs.
					nv := reflect.New(f.Elem.Type)
					if !fv.IsNil() {
						nv.Elem().Set(fv.Elem())
					}
					fv.Set(nv)
					target = nv.Elem()
				}
				rec.blocks[f.Name] = append(rec.blocks[f.Name],
					d.decodeStruct(b.Body, target, f.Elem, blockDesc(b), b.DefRange))
			}
		case roleBlockList:
			var (
				out  reflect.Value
				seen = map[string]hcl.Range{}
			)
			for _, b := range content.Blocks {
				if b.Type != f.Name {
					continue
				}
				if len(b.Labels) > 0 {
					key := strings.Join(b.Labels, "\x00")
					if prev, dup := seen[key]; dup {
						d.diags = append(d.diags, duplicateDiag("Duplicate "+blockDesc(b), b.DefRange, prev))
						continue
					}
					seen[key] = b.DefRange
				}
				elem := reflect.New(f.Elem.Type).Elem()
				for i, l := range f.Elem.Labels {
					if i < len(b.Labels) {
						elem.Field(l.Index).SetString(b.Labels[i])
					}
				}
				rec.blocks[f.Name] = append(rec.blocks[f.Name],
					d.decodeStruct(b.Body, elem, f.Elem, blockDesc(b), b.DefRange))
				if !out.IsValid() {
					out = reflect.MakeSlice(f.Type, 0, 1)
				}
				if f.Type.Elem().Kind() == reflect.Pointer {
					out = reflect.Append(out, elem.Addr())
				} else {
					out = reflect.Append(out, elem)
				}
			}
			if out.IsValid() { // written blocks replace the default list
				fv.Set(out)
			}
		}
	}
	d.validate(v, rec, desc)
	return rec
}

// validate calls Validate if the struct implements Validator.
func (d *decoder) validate(v reflect.Value, rec *bodyRecord, desc string) {
	var val Validator
	if v.CanAddr() {
		val, _ = v.Addr().Interface().(Validator)
	}
	if val == nil {
		val, _ = v.Interface().(Validator)
	}
	if val == nil {
		return
	}
	err := val.Validate()
	if err == nil {
		return
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		rng, bad := rec.rangeOf(fe.Field)
		if bad {
			return // that value is already reported
		}
		d.diags = append(d.diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("Invalid value for %q", fe.Field),
			Detail:   errText(fe.Err),
			Subject:  rng.Ptr(),
		})
		return
	}
	d.diags = append(d.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  "Invalid " + desc,
		Detail:   err.Error(),
		Subject:  rec.defRange.Ptr(),
	})
}

func errText(err error) string {
	if err == nil {
		return "invalid"
	}
	return err.Error()
}

// blockDesc names a nested block in messages: `tls block`, `peer "azure-1"`.
func blockDesc(b *hcl.Block) string {
	if len(b.Labels) == 0 {
		return b.Type + " block"
	}
	var sb strings.Builder
	sb.WriteString(b.Type)
	for _, l := range b.Labels {
		sb.WriteString(" ")
		sb.WriteString(strconv.Quote(l))
	}
	return sb.String()
}

// decodeAttr evaluates attr and stores it in fv. A null value keeps the
// default. It reports false when the value was not usable.
func (d *decoder) decodeAttr(attr *hcl.Attribute, fv reflect.Value) bool {
	val, diags := attr.Expr.Value(d.ectx)
	d.diags = append(d.diags, diags...)
	if diags.HasErrors() || !val.IsWhollyKnown() {
		return false
	}
	val, _ = val.Unmark()
	if val.IsNull() {
		return true
	}
	if err := setValue(fv, val); err != nil {
		d.diags = append(d.diags, &hcl.Diagnostic{
			Severity:    hcl.DiagError,
			Summary:     fmt.Sprintf("Invalid value for %q", attr.Name),
			Detail:      err.Error(),
			Subject:     attr.Expr.Range().Ptr(),
			Context:     attr.Range.Ptr(),
			Expression:  attr.Expr,
			EvalContext: d.ectx,
		})
		return false
	}
	return true
}

// setValue converts val to fv's type. Strings, lists of strings and
// durations must be written as such; numbers and bools may also come as
// strings (so that env() can supply them).
func setValue(fv reflect.Value, val cty.Value) error {
	t := fv.Type()
	switch {
	case t == durationType:
		if val.Type() != cty.String {
			return fmt.Errorf("expected a duration string such as \"5s\", got %s", describe(val))
		}
		dur, err := time.ParseDuration(val.AsString())
		if err != nil {
			return durationError(val.AsString(), err)
		}
		if dur < 0 {
			return fmt.Errorf("duration %q must not be negative", val.AsString())
		}
		fv.SetInt(int64(dur))
		return nil
	case t == stringsType:
		ty := val.Type()
		if !ty.IsListType() && !ty.IsTupleType() && !ty.IsSetType() {
			return fmt.Errorf("expected a list of strings, got %s", describe(val))
		}
		out := make([]string, 0, val.LengthInt())
		i := 0
		for it := val.ElementIterator(); it.Next(); i++ {
			_, ev := it.Element()
			ev, _ = ev.Unmark()
			if ev.IsNull() || ev.Type() != cty.String {
				return fmt.Errorf("expected a list of strings, element %d is %s", i+1, describe(ev))
			}
			out = append(out, ev.AsString())
		}
		fv.Set(reflect.ValueOf(out))
		return nil
	}
	switch t.Kind() {
	case reflect.String:
		if val.Type() != cty.String {
			return fmt.Errorf("expected a string, got %s", describe(val))
		}
		fv.SetString(val.AsString())
	case reflect.Bool:
		b, err := convert.Convert(val, cty.Bool)
		if err != nil || b.IsNull() {
			return fmt.Errorf("expected a bool, got %s", describe(val))
		}
		fv.SetBool(b.True())
	case reflect.Int, reflect.Int64:
		n, err := convert.Convert(val, cty.Number)
		if err != nil || n.IsNull() {
			return fmt.Errorf("expected a number, got %s", describe(val))
		}
		bf := n.AsBigFloat()
		if !bf.IsInt() {
			return fmt.Errorf("expected a whole number, got %s", bf.Text('g', -1))
		}
		i, acc := bf.Int64()
		if acc != big.Exact || (t.Kind() == reflect.Int && (i > math.MaxInt || i < math.MinInt)) {
			return fmt.Errorf("number %s is out of range", bf.Text('g', 20))
		}
		fv.SetInt(i)
	case reflect.Float64:
		n, err := convert.Convert(val, cty.Number)
		if err != nil || n.IsNull() {
			return fmt.Errorf("expected a number, got %s", describe(val))
		}
		f, _ := n.AsBigFloat().Float64()
		if math.IsInf(f, 0) {
			return fmt.Errorf("number is out of range")
		}
		fv.SetFloat(f)
	default:
		return fmt.Errorf("unsupported field type %s", t)
	}
	return nil
}

// describe names a value's type for messages: "a string", "a number".
func describe(v cty.Value) string {
	if v.IsNull() {
		return "null"
	}
	ty := v.Type()
	switch {
	case ty == cty.String:
		return "a string" // never the value itself: it may be a secret
	case ty == cty.Number:
		return "a number"
	case ty == cty.Bool:
		return "a bool"
	case ty.IsListType(), ty.IsTupleType(), ty.IsSetType():
		return "a list"
	case ty.IsObjectType(), ty.IsMapType():
		return "an object"
	}
	return ty.FriendlyName()
}

// durationError words a time.ParseDuration error as
// `time: invalid duration "5x": unknown unit "x" (units: ...)`.
func durationError(s string, err error) error {
	base := fmt.Sprintf("time: invalid duration %q", s)
	const units = " (units: ns, us, ms, s, m, h)"
	msg := err.Error()
	if msg == base {
		return errors.New(base + units)
	}
	reason := strings.TrimSuffix(strings.TrimPrefix(msg, "time: "), " in duration "+strconv.Quote(s))
	return errors.New(base + ": " + reason + units)
}
