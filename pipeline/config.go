package pipeline

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
)

// This file loads pipelines.hcl (the surface is shared/CONFIG.md) in two
// phases: the top-level blocks first, then each source, stage and sink body
// is decoded by the registry into its kind's config struct. Every problem is
// an hcl.Diagnostic with a subject range; all of them are collected in one
// run.

// Config is a loaded pipelines.hcl.
type Config struct {
	Filename  string
	Instance  Instance
	Admin     AdminConfig
	Log       LogConfig
	Tracing   TracingConfig
	Sources   []*Component // in file order
	Sinks     []*Component // in file order
	Pipelines []*PipelineConfig
}

// Component is one decoded source, stage or sink block.
type Component struct {
	Class Class
	Kind  string
	// Name is the block's name label; for stages, the kind.
	Name string
	// Config is the kind's decoded config struct pointer (from NewConfig).
	Config any
	// DefRange is the block's header (type and labels) in the file.
	DefRange hcl.Range
}

// Ref is the component's reference without its class: "websocket_server.ingress".
func (c *Component) Ref() string { return c.Kind + "." + c.Name }

// PipelineConfig is one pipeline block.
type PipelineConfig struct {
	Name string
	// Sources are references "KIND.NAME" ("websocket_server.ingress"), in
	// the order written.
	Sources []string
	// Stages are in order; a stage's Name is its kind.
	Stages []*Component
	// Sinks are references "KIND.NAME" ("websocket.links").
	Sinks    []string
	DefRange hcl.Range
}

// StageKinds lists the pipeline's stage kinds in order.
func (p *PipelineConfig) StageKinds() []string {
	out := make([]string, len(p.Stages))
	for i, s := range p.Stages {
		out[i] = s.Kind
	}
	return out
}

// HasStage reports whether the pipeline has a stage of kind.
func (p *PipelineConfig) HasStage(kind string) bool {
	return slices.ContainsFunc(p.Stages, func(s *Component) bool { return s.Kind == kind })
}

// SourceByRef finds a source by "KIND.NAME" or "source.KIND.NAME"; nil if
// there is none.
func (c *Config) SourceByRef(ref string) *Component {
	return findRef(c.Sources, strings.TrimPrefix(ref, "source."))
}

// SinkByRef finds a sink by "KIND.NAME" or "sink.KIND.NAME"; nil if there
// is none.
func (c *Config) SinkByRef(ref string) *Component {
	return findRef(c.Sinks, strings.TrimPrefix(ref, "sink."))
}

// Pipeline finds a pipeline by name; nil if there is none.
func (c *Config) Pipeline(name string) *PipelineConfig {
	for _, p := range c.Pipelines {
		if p.Name == name {
			return p
		}
	}
	return nil
}

func findRef(cs []*Component, ref string) *Component {
	for _, c := range cs {
		if c.Ref() == ref {
			return c
		}
	}
	return nil
}

// AdminConfig is the admin block: the HTTP listener for /metrics, /healthz,
// /readyz and /v1/...
type AdminConfig struct {
	Listen string `hcl:"listen,optional" doc:"host:port of the admin HTTP listener (/metrics, /healthz, /readyz, /v1/...)"`
	Token  string `hcl:"token,optional" doc:"bearer token required by /v1/... when set; required when listen is not a loopback address"`
	// ReadyPeers are peer link ids /readyz requires connected.
	ReadyPeers []string `hcl:"ready_peers,optional" doc:"peer link ids that must be connected for /readyz to answer ready (default: none required)"`
}

// Validate checks that listen is a host:port, and that a listener reachable
// from other machines has a token.
func (a *AdminConfig) Validate() error {
	host, _, err := net.SplitHostPort(a.Listen)
	if err != nil {
		return &FieldError{Field: "listen", Err: fmt.Errorf("must be host:port, got %q", a.Listen)}
	}
	if a.Token == "" && !IsLoopback(host) {
		return &FieldError{Field: "listen", Err: fmt.Errorf("%q is reachable from other machines, so the admin API needs a token: "+
			"set token (for example token = env(\"SLIPSTREAM_ADMIN_TOKEN\")), or listen on 127.0.0.1", a.Listen)}
	}
	return nil
}

// IsLoopback reports whether host (of a listen address) is a loopback
// address or "localhost"; "" and unspecified addresses (0.0.0.0, ::) are
// not: they listen on every interface.
func IsLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// LogConfig is the log block.
type LogConfig struct {
	Level    string `hcl:"level,optional" doc:"debug | info | warn | error"`
	Format   string `hcl:"format,optional" doc:"json | text"`
	Messages bool   `hcl:"messages,optional" doc:"log one line per message handled"`
}

// Log levels and formats the log block accepts.
var (
	LogLevels  = []string{"debug", "info", "warn", "error"}
	LogFormats = []string{"json", "text"}
)

// Validate checks the level and format.
func (l *LogConfig) Validate() error {
	if err := oneOf("level", l.Level, LogLevels); err != nil {
		return err
	}
	return oneOf("format", l.Format, LogFormats)
}

// TracingConfig is the tracing block (OpenTelemetry).
type TracingConfig struct {
	Exporter    string  `hcl:"exporter,optional" doc:"none | otlp_http | otlp_grpc | stdout"`
	Endpoint    string  `hcl:"endpoint,optional" doc:"collector address for the otlp exporters; empty: the exporter's default (OTEL_EXPORTER_OTLP_ENDPOINT or localhost)"`
	SampleRatio float64 `hcl:"sample_ratio,optional" doc:"fraction of new traces sampled, 0..1; a message that arrives with a sampled traceparent is always traced"`
	ServiceName string  `hcl:"service_name,optional" doc:"service.name resource attribute (default slipstream-<instance id>, so each instance shows as its own service in Jaeger)"`
}

// TracingExporters are the exporters the tracing block accepts.
var TracingExporters = []string{"none", "otlp_http", "otlp_grpc", "stdout"}

// Validate checks the exporter and the sample ratio.
func (t *TracingConfig) Validate() error {
	if err := oneOf("exporter", t.Exporter, TracingExporters); err != nil {
		return err
	}
	if t.SampleRatio < 0 || t.SampleRatio > 1 {
		return &FieldError{Field: "sample_ratio", Err: fmt.Errorf("must be between 0 and 1, got %g", t.SampleRatio)}
	}
	return nil
}

// instanceConfig is the instance block as written; Load resolves it into
// an Instance.
type instanceConfig struct {
	ID           string   `hcl:"id,optional" doc:"this instance's id, unique in the mesh; it goes into messagePath"`
	ClusterGroup string   `hcl:"cluster_group,optional" doc:"instances of one group share dedup state and serve one environment"`
	Tags         []string `hcl:"tags,optional" doc:"this instance's tags, announced to peers"`
	DataDir      string   `hcl:"data_dir,optional" doc:"directory of the Badger store"`
	MemtableSize int64    `hcl:"memtable_size,optional" doc:"size of each of the store's memtables, in bytes; 0: 8388608 (8 MiB). It sets most of the store's memory (up to three memtables, and table buffers as large) and the largest message it can take: one message with all its outbox entries must fit in 15% of a memtable (with 8 MiB and short link ids, some 3 000 recipients for 300 bytes, 350 for 3 KiB; from 4 KiB on, values go to the value log and a recipient costs ~60 bytes: some 11 000); a larger message is refused with ERR too_large. Larger also means fewer flushes and compactions (less CPU under load); smaller, less memory and more CPU. 1048576 to 1073741824"`
}

func (c *instanceConfig) Validate() error {
	switch {
	case strings.TrimSpace(c.ID) == "":
		return &FieldError{Field: "id", Err: errors.New("must not be empty")}
	case strings.TrimSpace(c.ClusterGroup) == "":
		return &FieldError{Field: "cluster_group", Err: errors.New("must not be empty")}
	case c.DataDir == "":
		return &FieldError{Field: "data_dir", Err: errors.New("must not be empty")}
	case c.MemtableSize != 0 && (c.MemtableSize < 1<<20 || c.MemtableSize > 1<<30):
		return &FieldError{Field: "memtable_size", Err: fmt.Errorf("must be 0 (the default, 8388608) or between 1048576 (1 MiB) and 1073741824 (1 GiB), got %d", c.MemtableSize)}
	}
	return nil
}

// instance resolves the block into an Instance.
func (c *instanceConfig) instance() Instance {
	return Instance{ID: c.ID, ClusterGroup: c.ClusterGroup, Tags: c.Tags, DataDir: c.DataDir, MemtableSize: c.MemtableSize}
}

func oneOf(field, v string, allowed []string) error {
	if slices.Contains(allowed, v) {
		return nil
	}
	return &FieldError{Field: field, Err: fmt.Errorf("must be one of %s, got %q", strings.Join(allowed, ", "), v)}
}

// fixedBlock is a top-level block that is not a kind: instance, admin, log,
// tracing. Each may appear at most once; an absent one takes its defaults.
type fixedBlock struct {
	Name      string
	Summary   string
	Example   string
	NewConfig func() any
}

var fixedBlocks = []fixedBlock{
	{
		Name:    "instance",
		Summary: "Who this instance is: its id in the mesh, its cluster group, its tags and where it keeps its data.",
		Example: `instance {
  id            = env("SLIPSTREAM_INSTANCE_ID", "local-1")
  cluster_group = "singleton"
  tags          = ["local"]
  data_dir      = "data"
}`,
		NewConfig: func() any {
			return &instanceConfig{ID: "local-1", ClusterGroup: "singleton", DataDir: "data"}
		},
	},
	{
		Name:    "admin",
		Summary: "The admin HTTP listener: /metrics, /healthz, /readyz and the /v1/... API.",
		Example: `admin {
  listen = "127.0.0.1:9090"
  token  = env("SLIPSTREAM_ADMIN_TOKEN")
}`,
		NewConfig: func() any { return &AdminConfig{Listen: "127.0.0.1:9090"} },
	},
	{
		Name:    "log",
		Summary: "Logging (log/slog): level, format, and whether each message handled is logged.",
		Example: `log {
  level    = "info"
  format   = "json"
  messages = false
}`,
		NewConfig: func() any { return &LogConfig{Level: "info", Format: "json"} },
	},
	{
		Name:    "tracing",
		Summary: "OpenTelemetry tracing: one span per stage, the trace context rides in the message.",
		Example: `tracing {
  exporter     = "otlp_http"
  endpoint     = "127.0.0.1:4318"
  sample_ratio = 1.0
}`,
		NewConfig: func() any {
			return &TracingConfig{Exporter: "none", SampleRatio: 1.0, ServiceName: ""}
		},
	},
}

func fixedBlockNamed(name string) *fixedBlock {
	for i := range fixedBlocks {
		if fixedBlocks[i].Name == name {
			return &fixedBlocks[i]
		}
	}
	return nil
}

// LookupEnv is how env() reads the environment; tests substitute it.
var LookupEnv = os.LookupEnv

// NewEvalContext returns the context expressions are evaluated in: no
// variables, and the function env(NAME) / env(NAME, DEFAULT), which reads
// the environment through LookupEnv. env(NAME) with NAME unset is an error.
func NewEvalContext() *hcl.EvalContext {
	return evalContext(func(name string) (string, bool) { return LookupEnv(name) })
}

func evalContext(lookup func(string) (string, bool)) *hcl.EvalContext {
	return &hcl.EvalContext{Functions: map[string]function.Function{"env": envFunc(lookup)}}
}

func envFunc(lookup func(string) (string, bool)) function.Function {
	return function.New(&function.Spec{
		Description: "Returns the value of an environment variable, or the default when it is unset.",
		Params:      []function.Parameter{{Name: "name", Type: cty.String}},
		VarParam:    &function.Parameter{Name: "default", Type: cty.String},
		Type:        function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			if len(args) > 2 {
				return cty.NilVal, function.NewArgErrorf(2, "env takes a name and at most one default")
			}
			name := args[0].AsString()
			if name == "" {
				return cty.NilVal, function.NewArgErrorf(0, "the variable name must not be empty")
			}
			if v, ok := lookup(name); ok {
				return cty.StringVal(v), nil
			}
			if len(args) == 2 {
				return args[1], nil
			}
			return cty.NilVal, fmt.Errorf("environment variable %q is not set and no default is given (write env(%q, \"default\") for one)", name, name)
		},
	})
}

var topSchema = &hcl.BodySchema{
	Blocks: []hcl.BlockHeaderSchema{
		{Type: "instance"},
		{Type: "admin"},
		{Type: "log"},
		{Type: "tracing"},
		{Type: "source", LabelNames: []string{"kind", "name"}},
		{Type: "sink", LabelNames: []string{"kind", "name"}},
		{Type: "pipeline", LabelNames: []string{"name"}},
	},
}

var pipelineSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "sources"}, {Name: "sinks"}},
	Blocks:     []hcl.BlockHeaderSchema{{Type: "stage", LabelNames: []string{"kind"}}},
}

// Load parses, decodes and validates a pipelines.hcl against DefaultKinds.
// It returns every problem found; when diags has errors the Config is
// incomplete and must not be run (it is never nil).
func Load(filename string, src []byte) (*Config, hcl.Diagnostics) {
	return LoadWith(DefaultKinds, filename, src)
}

// LoadFile reads and loads the file at path.
func LoadFile(path string) (*Config, hcl.Diagnostics) {
	src, err := os.ReadFile(path)
	if err != nil {
		return &Config{Filename: path}, hcl.Diagnostics{{
			Severity: hcl.DiagError,
			Summary:  "Cannot read configuration file",
			Detail:   err.Error(),
		}}
	}
	return Load(path, src)
}

// LoadWith is Load against the kinds of reg.
func LoadWith(reg *KindRegistry, filename string, src []byte) (*Config, hcl.Diagnostics) {
	l := &loader{
		reg: reg,
		dec: &decoder{ectx: NewEvalContext()},
		cfg: &Config{Filename: filename},
	}
	file, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	if diags.HasErrors() {
		// The parser's recovery is too rough to decode after: report the
		// syntax errors alone.
		l.setDefaults()
		return l.cfg, diags
	}
	l.diags = diags
	l.load(file.Body, filename)
	return l.cfg, append(l.diags, l.dec.diags...)
}

// loader holds the state of one Load.
type loader struct {
	reg   *KindRegistry
	dec   *decoder
	cfg   *Config
	diags hcl.Diagnostics

	sourceDefs map[string]hcl.Range // "kind.name" -> DefRange, known kinds or not
	sinkDefs   map[string]hcl.Range
	sourceUse  map[string]use // "kind.name" -> first pipeline reference
	sinkUsed   map[string]bool
}

// use is where a source is referenced.
type use struct {
	pipeline string
	rng      hcl.Range
}

func (l *loader) errorAt(rng hcl.Range, summary, detail string) {
	l.diags = append(l.diags, errorAt(rng, summary, detail))
}

// setDefaults fills the fixed blocks with their defaults.
func (l *loader) setDefaults() {
	ic := fixedBlockNamed("instance").NewConfig().(*instanceConfig)
	l.cfg.Instance = ic.instance()
	l.cfg.Admin = *fixedBlockNamed("admin").NewConfig().(*AdminConfig)
	l.cfg.Log = *fixedBlockNamed("log").NewConfig().(*LogConfig)
	l.cfg.Tracing = *fixedBlockNamed("tracing").NewConfig().(*TracingConfig)
}

func (l *loader) load(body hcl.Body, filename string) {
	l.sourceDefs = map[string]hcl.Range{}
	l.sinkDefs = map[string]hcl.Range{}
	l.sourceUse = map[string]use{}
	l.sinkUsed = map[string]bool{}

	content, diags := body.Content(topSchema)
	l.diags = append(l.diags, diags...)

	// Phase one: the fixed blocks, sources and sinks; pipelines wait until
	// every source and sink is known, wherever it is written.
	fixed := map[string]*hcl.Block{}
	pipelines := map[string]hcl.Range{}
	var pipeBlocks []*hcl.Block
	for _, b := range content.Blocks {
		switch b.Type {
		case "instance", "admin", "log", "tracing":
			if prev := fixed[b.Type]; prev != nil {
				l.diags = append(l.diags, duplicateDiag(fmt.Sprintf("Duplicate %s block", b.Type), b.DefRange, prev.DefRange))
				continue
			}
			fixed[b.Type] = b
		case "source":
			l.component(ClassSource, b, l.sourceDefs, &l.cfg.Sources)
		case "sink":
			l.component(ClassSink, b, l.sinkDefs, &l.cfg.Sinks)
		case "pipeline":
			name := b.Labels[0]
			if prev, dup := pipelines[name]; dup {
				l.diags = append(l.diags, duplicateDiag(fmt.Sprintf("Duplicate pipeline %q", name), b.DefRange, prev))
				continue
			}
			pipelines[name] = b.DefRange
			l.checkName("pipeline", name, b.LabelRanges[0])
			pipeBlocks = append(pipeBlocks, b)
		}
	}

	l.setDefaults()
	for _, fb := range fixedBlocks {
		b := fixed[fb.Name]
		if b == nil {
			continue
		}
		switch fb.Name {
		case "instance":
			ic := fb.NewConfig().(*instanceConfig)
			l.dec.decodeTop(b.Body, ic, "instance block", b.DefRange)
			l.cfg.Instance = ic.instance()
		case "admin":
			l.dec.decodeTop(b.Body, &l.cfg.Admin, "admin block", b.DefRange)
		case "log":
			l.dec.decodeTop(b.Body, &l.cfg.Log, "log block", b.DefRange)
		case "tracing":
			l.dec.decodeTop(b.Body, &l.cfg.Tracing, "tracing block", b.DefRange)
		}
	}

	// Phase two: pipelines.
	for _, b := range pipeBlocks {
		l.pipeline(b)
	}

	if len(pipeBlocks) == 0 && len(pipelines) == 0 {
		start := hcl.Range{Filename: filename, Start: hcl.InitialPos, End: hcl.InitialPos}
		l.errorAt(start, "No pipeline defined", `a configuration needs at least one pipeline "NAME" { ... } block`)
	}
	for _, c := range l.cfg.Sources {
		if _, used := l.sourceUse[c.Ref()]; !used {
			l.diags = append(l.diags, warningAt(c.DefRange,
				fmt.Sprintf("Unused source %q %q", c.Kind, c.Name), "no pipeline lists source."+c.Ref()))
		}
	}
	for _, c := range l.cfg.Sinks {
		if !l.sinkUsed[c.Ref()] {
			l.diags = append(l.diags, warningAt(c.DefRange,
				fmt.Sprintf("Unused sink %q %q", c.Kind, c.Name), "no pipeline lists sink."+c.Ref()))
		}
	}
}

// checkName reports a block name that cannot be referenced or used as a
// metric label.
func (l *loader) checkName(what, name string, rng hcl.Range) {
	if !hclsyntax.ValidIdentifier(name) {
		l.errorAt(rng, fmt.Sprintf("Invalid %s name %q", what, name),
			"a name starts with a letter and has only letters, digits, underscores and dashes")
	}
}

// component decodes a source or sink block.
func (l *loader) component(class Class, b *hcl.Block, defs map[string]hcl.Range, out *[]*Component) {
	kind, name := b.Labels[0], b.Labels[1]
	key := kind + "." + name
	if prev, dup := defs[key]; dup {
		l.diags = append(l.diags, duplicateDiag(fmt.Sprintf("Duplicate %s %q %q", class, kind, name), b.DefRange, prev))
		return
	}
	defs[key] = b.DefRange
	l.checkName(string(class), name, b.LabelRanges[1])
	k, ok := l.reg.Lookup(class, kind)
	if !ok {
		l.diags = append(l.diags, unknownKindDiag(b.DefRange, class, kind, l.reg.KindNames(class)))
		return
	}
	cfg := k.NewConfig()
	l.dec.decodeTop(b.Body, cfg, fmt.Sprintf("%s %q %q", class, kind, name), b.DefRange)
	*out = append(*out, &Component{Class: class, Kind: kind, Name: name, Config: cfg, DefRange: b.DefRange})
}

// pipeline decodes a pipeline block and checks its references and stage
// order.
func (l *loader) pipeline(b *hcl.Block) {
	p := &PipelineConfig{Name: b.Labels[0], DefRange: b.DefRange}
	content, diags := b.Body.Content(pipelineSchema)
	l.diags = append(l.diags, diags...)

	// Stages, in order.
	type stageAt struct {
		kind string
		rng  hcl.Range
	}
	var stages []stageAt
	seen := map[string]hcl.Range{}
	unknown := false
	for _, sb := range content.Blocks {
		kind := sb.Labels[0]
		if prev, dup := seen[kind]; dup {
			l.diags = append(l.diags, duplicateDiag(fmt.Sprintf("Duplicate stage %q", kind), sb.DefRange, prev))
			continue
		}
		seen[kind] = sb.DefRange
		stages = append(stages, stageAt{kind, sb.DefRange})
		k, ok := l.reg.Lookup(ClassStage, kind)
		if !ok {
			unknown = true
			l.diags = append(l.diags, unknownKindDiag(sb.DefRange, ClassStage, kind, l.reg.KindNames(ClassStage)))
			continue
		}
		cfg := k.NewConfig()
		l.dec.decodeTop(sb.Body, cfg, fmt.Sprintf("stage %q", kind), sb.DefRange)
		p.Stages = append(p.Stages, &Component{Class: ClassStage, Kind: kind, Name: kind, Config: cfg, DefRange: sb.DefRange})
	}

	// References.
	srcAttr, sinkAttr := content.Attributes["sources"], content.Attributes["sinks"]
	if srcAttr != nil {
		for _, r := range l.refs(srcAttr, ClassSource, l.sourceDefs) {
			ref := r.kind + "." + r.name
			if u, taken := l.sourceUse[ref]; taken && u.pipeline != p.Name {
				l.errorAt(r.rng, "Source used by more than one pipeline",
					fmt.Sprintf("source.%s is already used by pipeline %q at %s; a source feeds one pipeline", ref, u.pipeline, formatPos(u.rng)))
				continue
			}
			l.sourceUse[ref] = use{p.Name, r.rng}
			p.Sources = append(p.Sources, ref)
		}
	}
	if sinkAttr != nil {
		for _, r := range l.refs(sinkAttr, ClassSink, l.sinkDefs) {
			ref := r.kind + "." + r.name
			l.sinkUsed[ref] = true
			p.Sinks = append(p.Sinks, ref)
		}
	}
	if len(p.Sources) == 0 && !l.hadRefErrors(srcAttr) {
		rng := b.DefRange
		if srcAttr != nil {
			rng = srcAttr.Range
		}
		l.errorAt(rng, fmt.Sprintf("Pipeline %q has no sources", p.Name),
			"write sources = [source.KIND.NAME, ...]")
	}

	// Orderings that would break delivery.
	idx := func(kind string) int {
		return slices.IndexFunc(stages, func(s stageAt) bool { return s.kind == kind })
	}
	decode, persist, ack, fanout := idx("decode"), idx("persist"), idx("ack"), idx("fanout")
	switch {
	case decode > 0:
		l.errorAt(stages[decode].rng, `Stage "decode" must be the first stage`,
			fmt.Sprintf("every later stage reads the decoded message; stage %q comes before it at %s", stages[0].kind, formatPos(stages[0].rng)))
	case decode < 0 && !unknown:
		rng := b.DefRange
		if len(stages) > 0 {
			rng = stages[0].rng
		}
		l.errorAt(rng, fmt.Sprintf("Pipeline %q has no decode stage", p.Name),
			`the first stage of a pipeline must be stage "decode" {}`)
	}
	if ack >= 0 && persist > ack {
		l.errorAt(stages[ack].rng, `Stage "ack" must come after "persist"`,
			fmt.Sprintf("a message is acknowledged only once it is stored; persist is at %s", formatPos(stages[persist].rng)))
	}
	if ack >= 0 && persist < 0 && !unknown {
		l.errorAt(stages[ack].rng, `Stage "ack" needs a "persist" stage`,
			`acknowledging a message that is not stored loses it in a crash; add stage "persist" {} before ack`)
	}
	if fanout >= 0 && persist > fanout {
		l.errorAt(stages[fanout].rng, `Stage "fanout" must come after "persist"`,
			fmt.Sprintf("sinks deliver from the outboxes that persist writes; persist is at %s", formatPos(stages[persist].rng)))
	}
	if sinkAttr != nil && len(p.Sinks) > 0 && fanout < 0 && !unknown {
		l.errorAt(sinkAttr.Range, fmt.Sprintf("Pipeline %q has sinks but no fanout stage", p.Name),
			`the fanout stage hands messages to the sinks; add stage "fanout" {} after persist`)
	}
	if fanout >= 0 && len(p.Sinks) == 0 && !l.hadRefErrors(sinkAttr) {
		l.diags = append(l.diags, warningAt(stages[fanout].rng, `Stage "fanout" has no sinks`,
			"the pipeline lists no sinks, so fanout delivers nothing"))
	}
	l.cfg.Pipelines = append(l.cfg.Pipelines, p)
}

// hadRefErrors reports whether a reference attribute was written but
// produced errors (so "no sources" would only repeat them).
func (l *loader) hadRefErrors(attr *hcl.Attribute) bool {
	if attr == nil {
		return false
	}
	for _, d := range l.diags {
		if d.Severity == hcl.DiagError && d.Subject != nil && rangeWithin(*d.Subject, attr.Range) {
			return true
		}
	}
	return false
}

func rangeWithin(inner, outer hcl.Range) bool {
	return inner.Filename == outer.Filename &&
		inner.Start.Byte >= outer.Start.Byte && inner.End.Byte <= outer.End.Byte
}

// ref is one resolved reference.
type ref struct {
	kind, name string
	rng        hcl.Range
}

// refs reads a list of references of class (source.KIND.NAME) from attr
// without evaluating it, and checks that each is defined and listed once.
func (l *loader) refs(attr *hcl.Attribute, class Class, defs map[string]hcl.Range) []ref {
	form := fmt.Sprintf("%s.KIND.NAME", class)
	exprs, diags := hcl.ExprList(attr.Expr)
	if diags.HasErrors() {
		if _, tdiags := hcl.AbsTraversalForExpr(attr.Expr); !tdiags.HasErrors() {
			l.errorAt(attr.Expr.Range(), fmt.Sprintf("Invalid value for %q", attr.Name),
				fmt.Sprintf("expected a list of references; write %s = [%s]", attr.Name, exprText(attr.Expr)))
			return nil
		}
		l.errorAt(attr.Expr.Range(), fmt.Sprintf("Invalid value for %q", attr.Name),
			fmt.Sprintf("expected a list of references such as [%s]", form))
		return nil
	}
	var out []ref
	seen := map[string]hcl.Range{}
	for _, e := range exprs {
		trav, tdiags := hcl.AbsTraversalForExpr(e)
		if tdiags.HasErrors() {
			l.errorAt(e.Range(), fmt.Sprintf("Invalid %s reference", class),
				fmt.Sprintf("expected a reference of the form %s, not a value or an expression", form))
			continue
		}
		kind, name, ok := splitRef(trav, class)
		if !ok {
			detail := fmt.Sprintf("expected a reference of the form %s", form)
			if root := trav.RootName(); root != string(class) && (root == string(ClassSource) || root == string(ClassSink)) {
				detail += fmt.Sprintf("; %s lists %ss", attr.Name, class)
			}
			l.errorAt(trav.SourceRange(), fmt.Sprintf("Invalid %s reference", class), detail)
			continue
		}
		key := kind + "." + name
		if _, defined := defs[key]; !defined {
			detail := fmt.Sprintf("no %s %q %q is defined in this file", class, kind, name)
			known := make([]string, 0, len(defs))
			for k := range defs {
				known = append(known, k)
			}
			slices.Sort(known)
			if s := suggest(key, known); s != "" {
				detail += fmt.Sprintf(". Did you mean %s.%s?", class, s)
			}
			l.errorAt(trav.SourceRange(), fmt.Sprintf("Reference to undefined %s", class), detail)
			continue
		}
		if prev, dup := seen[key]; dup {
			l.diags = append(l.diags, duplicateDiag(fmt.Sprintf("Duplicate reference to %s.%s", class, key), trav.SourceRange(), prev))
			continue
		}
		seen[key] = trav.SourceRange()
		out = append(out, ref{kind, name, trav.SourceRange()})
	}
	return out
}

// splitRef splits class.KIND.NAME.
func splitRef(t hcl.Traversal, class Class) (kind, name string, ok bool) {
	if len(t) != 3 || t.RootName() != string(class) {
		return "", "", false
	}
	k, ok1 := t[1].(hcl.TraverseAttr)
	n, ok2 := t[2].(hcl.TraverseAttr)
	if !ok1 || !ok2 {
		return "", "", false
	}
	return k.Name, n.Name, true
}

// exprText renders a traversal expression back as written.
func exprText(e hcl.Expression) string {
	t, diags := hcl.AbsTraversalForExpr(e)
	if diags.HasErrors() {
		return "..."
	}
	var sb strings.Builder
	sb.WriteString(t.RootName())
	for _, step := range t[1:] {
		switch s := step.(type) {
		case hcl.TraverseAttr:
			sb.WriteString("." + s.Name)
		default:
			sb.WriteString("[...]")
		}
	}
	return sb.String()
}

// DecodeKindBlock parses src, which must hold one block of kind k as in its
// Example (`stage "dedup" { ... }`, `source "websocket_server" "NAME" { ... }`),
// and decodes its body into a fresh k.NewConfig(). Stage and source/sink
// unit tests build their config from a snippet with it.
func DecodeKindBlock(k *Kind, filename string, src []byte) (any, hcl.Diagnostics) {
	return decodeKindBlock(k, filename, src, NewEvalContext())
}

func decodeKindBlock(k *Kind, filename string, src []byte, ectx *hcl.EvalContext) (any, hcl.Diagnostics) {
	file, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	if diags.HasErrors() {
		return nil, diags
	}
	labels := []string{"kind", "name"}
	if k.Class == ClassStage {
		labels = []string{"kind"}
	}
	content, cdiags := file.Body.Content(&hcl.BodySchema{
		Blocks: []hcl.BlockHeaderSchema{{Type: string(k.Class), LabelNames: labels}},
	})
	diags = append(diags, cdiags...)
	if cdiags.HasErrors() {
		return nil, diags
	}
	if len(content.Blocks) != 1 {
		start := hcl.Range{Filename: filename, Start: hcl.InitialPos, End: hcl.InitialPos}
		return nil, append(diags, errorAt(start, fmt.Sprintf("Expected one %s block", k.Class),
			fmt.Sprintf("found %d", len(content.Blocks))))
	}
	b := content.Blocks[0]
	if b.Labels[0] != k.Name {
		return nil, append(diags, errorAt(b.LabelRanges[0], fmt.Sprintf("Expected a %s of kind %q", k.Class, k.Name),
			fmt.Sprintf("the block is of kind %q", b.Labels[0])))
	}
	desc := fmt.Sprintf("%s %q", k.Class, k.Name)
	if k.Class != ClassStage {
		desc += fmt.Sprintf(" %q", b.Labels[1])
	}
	cfg := k.NewConfig()
	d := &decoder{ectx: ectx}
	d.decodeTop(b.Body, cfg, desc, b.DefRange)
	return cfg, append(diags, d.diags...)
}
