package main

import (
	"bytes"
	"os"
	"testing"
)

// docs/config.md is generated: it must equal `slipstream docs`.
func TestConfigReferenceIsCurrent(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), []string{"docs"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	have, err := os.ReadFile("../../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(have, out.Bytes()) {
		t.Fatal("docs/config.md is out of date; regenerate it with: go run ./cmd/slipstream docs > docs/config.md")
	}
}
