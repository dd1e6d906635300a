package slipstream

import _ "embed"

// DefaultConfig is pipelines.hcl from the repository root, embedded in the
// binary: what `slipstream run` loads when it is given no config file and no
// legacy environment variables. It serves one local instance (a
// websocket_server on 127.0.0.1:7070, no peers) with the standard pipeline.
//
//go:embed pipelines.hcl
var DefaultConfig []byte
