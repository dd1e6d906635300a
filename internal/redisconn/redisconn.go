// Package redisconn makes the go-redis clients of the parts that use Redis
// (the redis sink, dedup's cluster-group store) from a configured URL, with
// the settings they share: short timeouts, no retries inside go-redis (each
// user has its own retry policy), no maintenance notifications (a single
// Redis, RESP2 is enough; they would also leave a goroutine behind Close),
// and go-redis's own log lines sent to slog at debug level (each user logs
// an outage once).
package redisconn

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// ParseURL checks a redis:// or rediss:// URL, with a hint in its error.
func ParseURL(url string) (*redis.Options, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("%v; write redis://[user:password@]host:port/db, or rediss:// for TLS", err)
	}
	return opts, nil
}

// New returns a client of url whose dials and commands time out after
// timeout.
func New(url string, timeout time.Duration) (*redis.Client, error) {
	opts, err := ParseURL(url)
	if err != nil {
		return nil, err
	}
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = timeout, timeout, timeout
	opts.MaxRetries = -1
	opts.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	return redis.NewClient(opts), nil
}

// logger sends go-redis's messages (every failed dial of an outage) to slog
// at debug level.
type logger struct{}

func (logger) Printf(ctx context.Context, format string, v ...any) {
	slog.DebugContext(ctx, fmt.Sprintf(format, v...), "part", "go-redis")
}

func init() { redis.SetLogger(logger{}) }
