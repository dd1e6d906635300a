package main

import (
	"fmt"
	"io"
	"os"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/envconfig"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// configSource picks the configuration text: the file at path when one is
// given; else, when URL_CONFIG or SLIPSTREAM_STORAGE_PATH is set, the HCL
// translated from the original deployment's environment variables
// (docs/env.md); else the embedded default.
func configSource(path string) (name string, src []byte, err error) {
	switch {
	case path != "":
		b, err := os.ReadFile(path)
		if err != nil {
			return "", nil, fmt.Errorf("read config: %w", err)
		}
		return path, b, nil
	case envconfig.Applies(os.Getenv):
		text, err := envconfig.Translate(os.Getenv)
		if err != nil {
			return "", nil, fmt.Errorf("configuration from the environment (docs/env.md): %w", err)
		}
		return "environment (URL_CONFIG, SLIPSTREAM_*)", []byte(text), nil
	}
	return "pipelines.hcl (embedded default)", slipstream.DefaultConfig, nil
}

// loadConfig loads the configuration configSource picks. Diagnostics are
// printed to stderr as file:line:col: message, all of them.
func loadConfig(path string, stderr io.Writer) (*pipeline.Config, error) {
	name, src, err := configSource(path)
	if err != nil {
		return nil, err
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
