package stages

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test or benchmark leaves a goroutine
// running: every store, link registry and runner a test makes must be shut
// down by the time it returns. Badger's goroutines end with DB.Close, which
// each harness calls in its cleanup, so none is ignored.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
