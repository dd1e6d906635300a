package main

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// With no -c and URL_CONFIG or SLIPSTREAM_STORAGE_PATH set, validate (and
// run) use the translation of the environment; -print shows it. A bad
// variable is named in the error.
func TestValidateFromEnvironment(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("URL_CONFIG", base64.StdEncoding.EncodeToString([]byte(`[{"id":"azure-1","url":"wss://azure.example.com:7070/ws","tags":["azure"]}]`)))
	t.Setenv("SLIPSTREAM_STORAGE_PATH", "store")
	t.Setenv("SLIPSTREAM_INSTANCE_ID", "pi-aws")
	code, out, errOut := runCLI(t, "validate")
	if code != exitOK || !strings.HasPrefix(out, "environment (URL_CONFIG, SLIPSTREAM_*): ok (instance \"pi-aws\", 2 source(s)") {
		t.Fatalf("validate: exit %d: %q %s", code, out, errOut)
	}
	code, out, _ = runCLI(t, "validate", "-print")
	if code != exitOK || !strings.Contains(out, `peer "azure-1" {`) || !strings.Contains(out, `data_dir      = "store"`) {
		t.Fatalf("validate -print: exit %d:\n%s", code, out)
	}

	// -c wins over the environment, and -print shows the file.
	file := filepath.Join(t.TempDir(), "f.hcl")
	if err := os.WriteFile(file, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SLIPSTREAM_RETRY_IN_N_SECONDS", "soon")
	code, out2, errOut := runCLI(t, "validate", "-c", file, "-print")
	if code != exitOK || out2 != out {
		t.Errorf("validate -c -print: exit %d %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "validate")
	if code != exitError || !strings.Contains(errOut, "SLIPSTREAM_RETRY_IN_N_SECONDS: must be a whole number") {
		t.Errorf("bad variable: exit %d: %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "run")
	if code != exitError || !strings.Contains(errOut, "SLIPSTREAM_RETRY_IN_N_SECONDS") {
		t.Errorf("run with a bad variable: exit %d: %s", code, errOut)
	}
}
