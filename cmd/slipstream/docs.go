package main

import (
	"fmt"
	"io"

	"github.com/slipstream-sync/slipstream/pipeline"
)

// runDocs prints the configuration reference generated from the kind
// registry; docs/config.md is its output (a test keeps them equal).
func runDocs(args []string, stdout io.Writer) error {
	if len(args) > 0 {
		return &usageError{fmt.Sprintf("docs takes no arguments (got %q)", args)}
	}
	_, err := io.WriteString(stdout, pipeline.ReferenceMarkdown())
	return err
}
