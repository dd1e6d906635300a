package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/slipstream-sync/slipstream/internal/daemon"
)

func runRun(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "", "config file (default: from the environment when URL_CONFIG or SLIPSTREAM_STORAGE_PATH is set, see docs/env.md; else the embedded pipelines.hcl: one local instance on 127.0.0.1:7070, data in ./data)")
	grace := fs.Duration("shutdown-timeout", 15*time.Second, "how long a graceful stop may take before it becomes a hard stop")
	if err := fs.Parse(args); err != nil {
		return &exitCodeError{code: exitUsage}
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("run takes no arguments (got %q); pass the config with -c", fs.Args())}
	}
	cfg, err := loadConfig(*path, stderr)
	if err != nil {
		return err
	}
	applyGCDefault(gcPercentEnv)
	in, err := daemon.New(cfg, daemon.Options{LogOutput: stderr})
	if err != nil {
		return err
	}

	// First SIGTERM/SIGINT: graceful drain. Second, or the deadline: hard stop.
	graceful, stop := context.WithCancel(ctx)
	defer stop()
	hard, hardStop := context.WithCancel(context.WithoutCancel(ctx))
	defer hardStop()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	defer close(done)
	hup := make(chan os.Signal, 1) // SIGHUP: re-read certificates and keys (docs/tls.md)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				_ = in.Reload() // each failure is logged; the previous files stay in use
			case <-done:
				return
			}
		}
	}()
	go func() {
		select {
		case s := <-sigs:
			fmt.Fprintf(stderr, "slipstream: %s: draining (send again to stop at once)\n", s)
			stop()
		case <-done:
			return
		}
		select {
		case <-sigs:
			fmt.Fprintln(stderr, "slipstream: second signal: stopping now")
		case <-time.After(*grace):
			fmt.Fprintf(stderr, "slipstream: drain took longer than %s: stopping now\n", *grace)
		case <-done:
		}
		hardStop()
	}()
	return in.Run(graceful, hard)
}
