package main

import (
	"fmt"
	"io"
	"os"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// loadConfig loads path, or the embedded default when path is "". Diagnostics
// are printed to stderr as file:line:col: message, all of them.
func loadConfig(path string, stderr io.Writer) (*pipeline.Config, error) {
	name, src := "pipelines.hcl (embedded default)", slipstream.DefaultConfig
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		name, src = path, b
	}
	cfg, diags := pipeline.Load(name, src)
	if len(diags) > 0 {
		fmt.Fprint(stderr, pipeline.FormatDiagnostics(diags))
	}
	if diags.HasErrors() {
		return nil, &exitCodeError{code: exitError}
	}
	return cfg, nil
}
