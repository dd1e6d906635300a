package stages

import (
	"os"
	"testing"

	"github.com/slipstream-sync/slipstream/pipeline"
)

// Every stage kind is registered with a summary and an example that decodes
// and builds, and has its own <kind>.go and <kind>_test.go here (the
// registration is the documentation; each stage is tested on its own).
func TestStageKinds(t *testing.T) {
	for _, want := range []string{"decode", "loop_check", "dedup", "tag_filter", "persist", "ack", "fanout"} {
		if _, ok := pipeline.Lookup(pipeline.ClassStage, want); !ok {
			t.Errorf("stage kind %q is not registered", want)
		}
	}
	for _, k := range pipeline.Kinds(pipeline.ClassStage) {
		t.Run(k.Name, func(t *testing.T) {
			if k.Summary == "" {
				t.Errorf("no summary")
			}
			for _, f := range []string{k.Name + ".go", k.Name + "_test.go"} {
				if _, err := os.Stat(f); err != nil {
					t.Errorf("stage kind %q: %v", k.Name, err)
				}
			}
			h := newHarness(t)
			h.bc.StageKinds = []string{k.Name}
			if st := h.stage(k.Example); st == nil {
				t.Errorf("example built nothing")
			}
		})
	}
}
