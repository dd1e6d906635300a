package client_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/slipstream-sync/slipstream/internal/testredis"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testredis.IgnoreLeaks())
}
