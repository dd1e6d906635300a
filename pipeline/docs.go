package pipeline

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// The registration is the documentation: ReferenceMarkdown renders the
// config reference (docs/config.md, `slipstream docs`) from the fixed blocks
// and the registered kinds, and CheckExamples decodes every example.

// decisions are the loader's rules that shared/CONFIG.md leaves open; they
// head the generated reference.
var decisions = []string{
	"A file without a pipeline block is an error. Absent `instance`, `admin`, `log` and `tracing` blocks take their defaults; each may appear at most once.",
	"Source and sink names are unique per kind: `source \"websocket_server\" \"a\"` and `source \"websocket_client\" \"a\"` may both exist, because a reference names the kind. Names (and pipeline names) must be HCL identifiers (letters, digits, `_`, `-`; starting with a letter) so that they can be referenced.",
	"References are read from the syntax, never evaluated: `sources` and `sinks` are lists of `source.KIND.NAME` / `sink.KIND.NAME`. A source feeds exactly one pipeline; a sink may be listed by several pipelines. Listing the same reference twice in one list is an error. A source or sink that no pipeline lists is a warning.",
	"Stage rules: `decode` is required and first; the same kind may appear once per pipeline; `ack` requires `persist` and comes after it; `fanout` comes after `persist` when both are present (a pipeline without `persist` may still fan out); sinks require a `fanout` stage; a `fanout` with no sinks is a warning. Stages not named here are not ordered by the loader.",
	"Value types are strict for strings, lists of strings and durations (no number-to-string conversion). Numbers and bools may also be written as strings (`\"3\"`, `\"true\"`) so that `env()` can supply them. `null` leaves the default. Durations are Go duration strings and must not be negative.",
	"`env(NAME)` with NAME unset is an error at the call; `env(NAME, DEFAULT)` returns DEFAULT. `env` accepts at most one default. An empty name is an error.",
	"Validation errors about one attribute (a `FieldError`) point at the attribute's value; when the attribute is not written, at the block header. A `FieldError.Field` may be a path into nested blocks (`retry.interval`, `peer[1].url`). Repeated labelled blocks must have distinct labels (`peer \"azure-1\"` twice is an error). Written repeated blocks replace the default list; their elements start from zero values.",
	"Syntax errors stop loading (the other checks are not run on a file that does not parse); every other problem is collected and reported in one run. Diagnostics print as `file:line:col: Summary; Detail`, errors first, then warnings (`warning: `), each in source order.",
	"A block of an unknown kind is reported once, with the known kinds and the closest name: it still counts as defined for references, and a pipeline with a stage of unknown kind skips the rules about missing stages (`decode`, `persist`, `fanout`).",
	"`log.level` is one of debug, info, warn, error and `log.format` json or text (lower case); `tracing.sample_ratio` is within 0..1; an empty `tracing.endpoint` leaves the exporter's own default; `admin.listen` must be host:port; `instance.id`, `cluster_group`, `data_dir` and `tracing.service_name` must not be empty. Secrets are never echoed: a type error says \"got a string\", not the value.",
}

// stageOrder is the order of the standard pipeline (ARCHITECTURE.md); the
// reference lists stage kinds in it, others after them by name.
var stageOrder = []string{"decode", "loop_check", "dedup", "tag_filter", "persist", "ack", "state", "command", "fanout"}

func stageRank(kind string) int {
	if i := slices.Index(stageOrder, kind); i >= 0 {
		return i
	}
	return len(stageOrder)
}

const examplePipeline = `pipeline "sync" {
  sources = [source.websocket_server.ingress, source.websocket_client.peers]

  stage "decode" {}
  stage "loop_check" {}
  stage "dedup" {
    window = "24h"
  }
  stage "tag_filter" {}
  stage "persist" {}
  stage "ack" {}
  stage "fanout" {}

  sinks = [sink.websocket.links]
}`

// ReferenceMarkdown renders the configuration reference for the fixed
// blocks and every kind in DefaultKinds. The output is deterministic.
func ReferenceMarkdown() string { return ReferenceMarkdownFor(DefaultKinds) }

// ReferenceMarkdownFor renders the configuration reference for reg.
func ReferenceMarkdownFor(reg *KindRegistry) string {
	var w strings.Builder
	w.WriteString("# Slipstream configuration reference\n\n")
	w.WriteString("Generated from the kind registry (`slipstream docs`); do not edit by hand. ")
	w.WriteString("Durations are Go duration strings (`\"5s\"`, `\"1m\"`, `\"24h\"`); ")
	w.WriteString("`env(\"NAME\")` and `env(\"NAME\", \"default\")` read the environment.\n\n")

	w.WriteString("## Decisions\n\n")
	for _, d := range decisions {
		w.WriteString("- " + d + "\n")
	}

	w.WriteString("\n## Top-level blocks\n")
	for _, fb := range fixedBlocks {
		writeSection(&w, "`"+fb.Name+"`", fb.Summary+" At most one; absent, it takes the defaults below.", fb.Example, fb.NewConfig())
	}
	w.WriteString("\n## Pipelines\n\n")
	w.WriteString("`pipeline \"NAME\"` lists `sources = [source.KIND.NAME, ...]`, then `stage \"KIND\" {}` blocks in order, ")
	w.WriteString("and `sinks = [sink.KIND.NAME, ...]`. Stages are listed below in the order a pipeline runs them.\n\n")
	w.WriteString("```hcl\n" + examplePipeline + "\n```\n")

	for _, sec := range []struct {
		class Class
		title string
	}{{ClassSource, "Sources"}, {ClassStage, "Stages"}, {ClassSink, "Sinks"}} {
		fmt.Fprintf(&w, "\n## %s\n", sec.title)
		ks := reg.Kinds(sec.class)
		if sec.class == ClassStage {
			slices.SortStableFunc(ks, func(a, b *Kind) int { return stageRank(a.Name) - stageRank(b.Name) })
		}
		if len(ks) == 0 {
			w.WriteString("\nNone registered.\n")
		}
		for _, k := range ks {
			head := fmt.Sprintf("`%s %q`", k.Class, k.Name)
			if k.Class != ClassStage {
				head = fmt.Sprintf("`%s %q \"NAME\"`", k.Class, k.Name)
			}
			writeSection(&w, head, k.Summary, k.Example, k.NewConfig())
		}
	}
	return w.String()
}

// writeSection renders one block: summary, attribute table, nested blocks,
// example.
func writeSection(w *strings.Builder, head, summary, example string, cfg any) {
	fmt.Fprintf(w, "\n### %s\n\n", head)
	if summary != "" {
		w.WriteString(summary + "\n")
	}
	rv := reflect.ValueOf(cfg)
	if rv.Kind() == reflect.Pointer && !rv.IsNil() && rv.Elem().Kind() == reflect.Struct {
		if spec, err := specFor(rv.Elem().Type()); err == nil {
			writeStruct(w, "", rv.Elem(), spec)
		}
	}
	if strings.TrimSpace(example) != "" {
		w.WriteString("\nExample:\n\n```hcl\n" + strings.TrimSpace(example) + "\n```\n")
	}
}

// writeStruct renders the attribute table of v, then its nested blocks
// (path is the enclosing block path, "" at the top).
func writeStruct(w *strings.Builder, path string, v reflect.Value, spec *structSpec) {
	var attrs, blocks []*fieldSpec
	for _, f := range spec.Fields {
		if f.Role == roleAttr {
			attrs = append(attrs, f)
		} else {
			blocks = append(blocks, f)
		}
	}
	if len(attrs) > 0 {
		w.WriteString("\n| attribute | type | default | description |\n|---|---|---|---|\n")
		for _, f := range attrs {
			def := "required"
			if !f.Required {
				def = defaultText(v.Field(f.Index))
			}
			fmt.Fprintf(w, "| `%s` | %s | %s | %s |\n", f.Name, typeText(f.Type), def, cell(f.Doc))
		}
	} else if len(blocks) == 0 {
		w.WriteString("\nNo attributes.\n")
	}
	for _, f := range blocks {
		full := f.Name
		if path != "" {
			full = path + "." + f.Name
		}
		header := "`" + full
		for _, l := range f.Elem.Labels {
			header += fmt.Sprintf(" \"%s\"", strings.ToUpper(l.Name))
		}
		header += "`"
		var elem reflect.Value
		how := "at most one"
		switch fv := v.Field(f.Index); {
		case f.Role == roleBlockList:
			how = "repeated"
			if len(f.Elem.Labels) > 0 {
				how += ", each with a distinct label"
			}
			elem = reflect.New(f.Elem.Type).Elem()
		case fv.Kind() == reflect.Pointer && fv.IsNil():
			elem = reflect.New(f.Elem.Type).Elem()
		case fv.Kind() == reflect.Pointer:
			elem = fv.Elem()
		default:
			elem = fv
		}
		fmt.Fprintf(w, "\nBlock %s (%s)", header, how)
		if f.Doc != "" {
			w.WriteString(": " + f.Doc)
		}
		w.WriteString("\n")
		writeStruct(w, full, elem, f.Elem)
	}
}

func cell(s string) string {
	return strings.ReplaceAll(oneLine(s), "|", `\|`)
}

func typeText(t reflect.Type) string {
	switch {
	case t == durationType:
		return "duration"
	case t == stringsType:
		return "list of string"
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "bool"
	case reflect.Int, reflect.Int64:
		return "whole number"
	case reflect.Float64:
		return "number"
	}
	return t.String()
}

// defaultText renders a default value as HCL, "—" when unset.
func defaultText(v reflect.Value) string {
	switch {
	case v.Type() == durationType:
		return "`" + strconv.Quote(durationText(time.Duration(v.Int()))) + "`"
	case v.Type() == stringsType:
		if v.Len() == 0 {
			return "—"
		}
		q := make([]string, v.Len())
		for i := range q {
			q[i] = strconv.Quote(v.Index(i).String())
		}
		return "`[" + strings.Join(q, ", ") + "]`"
	}
	switch v.Kind() {
	case reflect.String:
		if v.String() == "" {
			return "—"
		}
		return "`" + cell(strconv.Quote(v.String())) + "`"
	case reflect.Bool:
		return "`" + strconv.FormatBool(v.Bool()) + "`"
	case reflect.Int, reflect.Int64:
		return "`" + strconv.FormatInt(v.Int(), 10) + "`"
	case reflect.Float64:
		f := v.Float()
		if f == float64(int64(f)) {
			return fmt.Sprintf("`%.1f`", f)
		}
		return "`" + strconv.FormatFloat(f, 'g', -1, 64) + "`"
	}
	return "—"
}

// durationText prints d as written in HCL: "5m" rather than "5m0s".
func durationText(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// CheckExamples decodes the example of every fixed block and of every kind
// in reg, and reports what does not decode cleanly (a kind without an
// example is an error too). env() calls in examples read the environment
// and fall back to a placeholder, so examples may name secrets.
func CheckExamples(reg *KindRegistry) hcl.Diagnostics {
	ectx := evalContext(func(name string) (string, bool) {
		if v, ok := LookupEnv(name); ok {
			return v, true
		}
		return "example-" + strings.ToLower(name), true
	})
	var diags hcl.Diagnostics
	for _, fb := range fixedBlocks {
		filename := fb.Name + ".example.hcl"
		file, d := hclsyntax.ParseConfig([]byte(fb.Example), filename, hcl.InitialPos)
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		content, d := file.Body.Content(&hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{{Type: fb.Name}}})
		diags = append(diags, d...)
		for _, b := range content.Blocks {
			dec := &decoder{ectx: ectx}
			dec.decodeTop(b.Body, fb.NewConfig(), fb.Name+" block", b.DefRange)
			diags = append(diags, dec.diags...)
		}
	}
	for _, class := range []Class{ClassSource, ClassStage, ClassSink} {
		for _, k := range reg.Kinds(class) {
			filename := fmt.Sprintf("%s_%s.example.hcl", class, k.Name)
			if strings.TrimSpace(k.Example) == "" {
				diags = append(diags, &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  fmt.Sprintf("The %s kind %q has no example", class, k.Name),
					Detail:   "the registration is the documentation: give Kind.Example a whole block",
				})
				continue
			}
			_, d := decodeKindBlock(k, filename, []byte(k.Example), ectx)
			diags = append(diags, d...)
		}
	}
	return diags
}
