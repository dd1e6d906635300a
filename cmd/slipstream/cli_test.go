package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(t.Context(), args, &out, &errb)
	code = exitCode(err, &errb)
	return code, out.String(), errb.String()
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.hcl")
	if err := os.WriteFile(bad, []byte(`instance {
  id = "x"
}
pipeline "p" {
  sources = [source.websocket_server.nope]
  stage "dedupe" {}
  stage "decode" {}
}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLI(t, "validate", "-c", bad)
	if code != exitError {
		t.Errorf("exit %d, want %d", code, exitError)
	}
	for _, want := range []string{
		bad + ":5:", // the undefined source, with its position
		bad + ":6:3: Unknown stage kind \"dedupe\"", // the misspelt kind
		"known kinds:", // listing the known ones
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("diagnostics lack %q:\n%s", want, stderr)
		}
	}
	if n := strings.Count(strings.TrimSpace(stderr), "\n") + 1; n < 2 {
		t.Errorf("want every problem reported at once, got:\n%s", stderr)
	}

	code, stdout, stderr := runCLI(t, "validate")
	if code != exitOK || !strings.Contains(stdout, "ok") {
		t.Errorf("embedded default: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, _, _ := runCLI(t, "validate", "-c", filepath.Join(dir, "missing.hcl")); code != exitError {
		t.Errorf("missing file: exit %d", code)
	}
}

func TestVersionAndUsage(t *testing.T) {
	code, stdout, _ := runCLI(t, "version")
	if code != exitOK || !strings.HasPrefix(stdout, "slipstream ") || !strings.Contains(stdout, "protocol 1") {
		t.Errorf("version: %d %q", code, stdout)
	}
	code, _, stderr := runCLI(t, "frobnicate")
	if code != exitUsage || !strings.Contains(stderr, `unknown command "frobnicate"`) || !strings.Contains(stderr, "Usage:") {
		t.Errorf("unknown command: %d %q", code, stderr)
	}
	if code, _, _ := runCLI(t); code != exitUsage {
		t.Errorf("no command: exit %d", code)
	}
}
