package pipeline

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/store"
)

// Class says what a kind builds.
type Class string

const (
	ClassSource Class = "source"
	ClassStage  Class = "stage"
	ClassSink   Class = "sink"
)

// Kind is a registered source, stage or sink kind. The registration is the
// documentation: `slipstream docs` and docs/config.md are generated from it,
// and a test decodes every Example.
type Kind struct {
	Class   Class
	Name    string
	Summary string
	// Example is an HCL snippet of a whole block of this kind.
	Example string
	// NewConfig returns a pointer to a fresh config struct holding the
	// defaults. Fields carry `hcl:"name,optional"`, `hcl:"name,block"` or
	// `hcl:"name,label"` tags and a `doc:"..."` tag. Supported field types:
	// string, bool, int, int64, float64, []string, time.Duration (written as a
	// Go duration string), a struct or *struct (a block), and []struct (a
	// repeated block, labelled when the struct has a label field). If the
	// struct implements Validator, Validate is called after decoding.
	NewConfig func() any
	// Build makes the part from its decoded config. It returns a Source, Stage
	// or Sink according to Class (and optionally a Closer / Starter).
	Build func(cfg any, bc *BuildContext) (any, error)
}

// Validator is implemented by kind configs that check themselves after
// decoding. Return a *FieldError to point the diagnostic at one attribute.
type Validator interface {
	Validate() error
}

// FieldError is a Validate error about one attribute (its hcl name).
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// Instance is the instance block of the config, resolved.
type Instance struct {
	ID           string
	ClusterGroup string
	Tags         []string
	DataDir      string
	MemtableSize int64 // bytes; 0: the store's default
}

// BuildContext is what a kind's Build gets: the instance it belongs to and
// the shared parts, with observability injected (never global).
type BuildContext struct {
	Instance Instance
	Pipeline string // pipeline name ("" for sources and sinks)
	Name     string // block name: "ingress", or the stage kind for stages
	Store    *store.Store
	Links    *link.Registry
	Logger   *slog.Logger
	Metrics  prometheus.Registerer
	Tracer   trace.Tracer
	// Sinks are the built sinks of the pipeline (stages only).
	Sinks []Sink
	// Commands holds the instance's slipstream.* commands, run by the
	// command stage (stages only; may be nil in tests).
	Commands *Commands
	// StageKinds lists the stage kinds of the pipeline, in order (stages only).
	StageKinds []string
	// StageConfigs maps the kind of each stage of this pipeline to its
	// decoded config (stages only; a stage may read another one's settings,
	// as persist reads dedup's window and state's tombstone_ttl).
	StageConfigs map[string]any
}

// HasStage reports whether the pipeline being built has a stage of kind.
func (bc *BuildContext) HasStage(kind string) bool {
	for _, k := range bc.StageKinds {
		if k == kind {
			return true
		}
	}
	return false
}

// KindRegistry holds the kinds of each class by name. The package-level
// Register, Lookup, Kinds and KindNames use DefaultKinds; tests and tools can
// make their own with NewKindRegistry and load against it with LoadWith.
type KindRegistry struct {
	mu    sync.RWMutex
	kinds map[Class]map[string]*Kind
}

// NewKindRegistry returns an empty registry.
func NewKindRegistry() *KindRegistry {
	return &KindRegistry{kinds: map[Class]map[string]*Kind{}}
}

// DefaultKinds is the registry the kinds of sources/, stages/ and sinks/ add
// themselves to from init, and the one Load uses.
var DefaultKinds = NewKindRegistry()

// Register adds a kind; call it from init. A duplicate name, a missing
// field, or a config struct the decoder cannot decode (see Kind.NewConfig)
// panics: these are programming errors, caught when the binary starts.
func (r *KindRegistry) Register(k Kind) {
	if k.Name == "" || k.NewConfig == nil || k.Build == nil {
		panic(fmt.Sprintf("pipeline: incomplete %s kind %q", k.Class, k.Name))
	}
	switch k.Class {
	case ClassSource, ClassStage, ClassSink:
	default:
		panic(fmt.Sprintf("pipeline: kind %q has unknown class %q", k.Name, k.Class))
	}
	if err := checkConfigType(k.NewConfig()); err != nil {
		panic(fmt.Sprintf("pipeline: %s kind %q: %v", k.Class, k.Name, err))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.kinds[k.Class]
	if m == nil {
		m = map[string]*Kind{}
		r.kinds[k.Class] = m
	}
	if _, dup := m[k.Name]; dup {
		panic(fmt.Sprintf("pipeline: %s kind %q registered twice", k.Class, k.Name))
	}
	kk := k
	m[k.Name] = &kk
}

// Lookup finds a registered kind.
func (r *KindRegistry) Lookup(c Class, name string) (*Kind, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	k, ok := r.kinds[c][name]
	return k, ok
}

// Kinds lists the registered kinds of a class, sorted by name.
func (r *KindRegistry) Kinds(c Class) []*Kind {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*Kind, 0, len(r.kinds[c]))
	for _, k := range r.kinds[c] {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// KindNames lists the names of a class's kinds, sorted.
func (r *KindRegistry) KindNames(c Class) []string {
	ks := r.Kinds(c)
	names := make([]string, len(ks))
	for i, k := range ks {
		names[i] = k.Name
	}
	return names
}

// Register adds a kind to DefaultKinds; call it from init. A duplicate name
// panics.
func Register(k Kind) { DefaultKinds.Register(k) }

// Lookup finds a kind in DefaultKinds.
func Lookup(c Class, name string) (*Kind, bool) { return DefaultKinds.Lookup(c, name) }

// Kinds lists the kinds of a class in DefaultKinds, sorted by name.
func Kinds(c Class) []*Kind { return DefaultKinds.Kinds(c) }

// KindNames lists the names of a class's kinds in DefaultKinds, sorted.
func KindNames(c Class) []string { return DefaultKinds.KindNames(c) }
