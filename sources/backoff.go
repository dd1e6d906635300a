package sources

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/slipstream-sync/slipstream/pipeline"
)

// Retry defaults (CONFIG.md).
const (
	DefaultRetryInterval    = 5 * time.Second
	DefaultRetryMaxInterval = time.Minute
	DefaultRetryAttempts    = 10
	DefaultRetryCooldown    = 5 * time.Minute
)

// RetryConfig is the retry block of the websocket_client source.
type RetryConfig struct {
	Interval    time.Duration `hcl:"interval,optional" doc:"shortest wait before a redial; the wait after the n-th consecutive failure is random in [interval, min(max_interval, interval x 2^n)]"`
	MaxInterval time.Duration `hcl:"max_interval,optional" doc:"longest wait between two dials"`
	Attempts    int           `hcl:"attempts,optional" doc:"consecutive failed dials before waiting cooldown and starting over; 0 = never give up (keep backing off at max_interval)"`
	Cooldown    time.Duration `hcl:"cooldown,optional" doc:"the wait after attempts consecutive failures"`
}

// DefaultRetry returns interval 5s, max_interval 1m, attempts 10, cooldown 5m.
func DefaultRetry() RetryConfig {
	return RetryConfig{Interval: DefaultRetryInterval, MaxInterval: DefaultRetryMaxInterval,
		Attempts: DefaultRetryAttempts, Cooldown: DefaultRetryCooldown}
}

// Validate implements pipeline.Validator; field names are relative to the
// retry block.
func (r *RetryConfig) Validate() error {
	switch {
	case r.Interval <= 0:
		return &pipeline.FieldError{Field: "interval", Err: errors.New("must be greater than 0")}
	case r.MaxInterval <= 0:
		return &pipeline.FieldError{Field: "max_interval", Err: errors.New("must be greater than 0")}
	case r.MaxInterval < r.Interval:
		return &pipeline.FieldError{Field: "max_interval", Err: errors.New("must be at least interval")}
	case r.Attempts < 0:
		return &pipeline.FieldError{Field: "attempts", Err: errors.New("must be 0 (never give up) or more")}
	case r.Cooldown <= 0:
		return &pipeline.FieldError{Field: "cooldown", Err: errors.New("must be greater than 0")}
	}
	return nil
}

// backoff is the redial policy of one peer: exponential backoff with full
// jitter between retry.interval and retry.max_interval, and a cooldown
// after retry.attempts consecutive failures.
type backoff struct {
	cfg RetryConfig
	// int64N returns a uniform random number in [0, n); rand.Int64N unless
	// a test injects its own.
	int64N func(n int64) int64
}

func newBackoff(cfg RetryConfig) *backoff { return &backoff{cfg: cfg, int64N: rand.Int64N} }

// delay is the wait before the next dial after n consecutive failures: a
// uniform random duration in [interval, min(max_interval, interval x 2^n)].
// n = 0 (a connection that stayed up ended) waits exactly interval.
func (b *backoff) delay(n int) time.Duration {
	ceil := b.cfg.Interval
	for i := 0; i < n && ceil < b.cfg.MaxInterval; i++ {
		ceil *= 2
	}
	ceil = min(ceil, b.cfg.MaxInterval)
	span := int64(ceil - b.cfg.Interval)
	if span <= 0 {
		return b.cfg.Interval
	}
	return b.cfg.Interval + time.Duration(b.int64N(span+1))
}

// next is the wait after the n-th consecutive failure (n >= 1). cooldown
// reports that it is retry.cooldown: attempts failures in a row, after which
// the count starts over. With attempts 0 it is never the cooldown.
func (b *backoff) next(n int) (wait time.Duration, cooldown bool) {
	if b.cfg.Attempts > 0 && n >= b.cfg.Attempts {
		return b.cfg.Cooldown, true
	}
	return b.delay(n), false
}
