// Command slipstream runs and operates Slipstream instances.
//
//	slipstream run [-c pipelines.hcl]     run an instance (no -c: the embedded default)
//	slipstream validate [-c file]         check a config; exit 1 with every diagnostic
//	slipstream bench [flags]              load-test an instance
//	slipstream dlq ls|replay|purge        list, replay and purge dead letters
//	slipstream get KEY                    read a key from the instances' state
//	slipstream pub [flags]                send any message, print the ACK or ERR
//	slipstream sub [flags]                connect as a client, print what arrives
//	slipstream cmd NAME                   send a command, print each reply
//	slipstream docs                       print the configuration reference
//	slipstream version                    print the version
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	// Register every kind.
	_ "github.com/slipstream-sync/slipstream/sinks"
	_ "github.com/slipstream-sync/slipstream/sources"
	_ "github.com/slipstream-sync/slipstream/stages"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command failed (bad config, runtime error)
	exitUsage = 2 // the command line was wrong
)

// usageError is a command-line mistake; it prints the usage hint.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// exitError carries an exit code decided by a subcommand without a message
// of its own (it printed what it had to).
type exitCodeError struct{ code int }

func (e *exitCodeError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func main() {
	err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)
	os.Exit(exitCode(err, os.Stderr))
}

func exitCode(err error, stderr io.Writer) int {
	var ue *usageError
	var ec *exitCodeError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ec):
		return ec.code
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "slipstream: %s\n\n%s", ue.msg, usage)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "slipstream: %v\n", err)
		return exitError
	}
}

const usage = `Usage: slipstream <command> [flags]

Commands:
  run       run an instance (-c FILE, default: the embedded pipelines.hcl)
  validate  check a config file and print every problem (-c FILE)
  bench     load-test an instance (slipstream bench -h)
  dlq       list, replay and purge dead letters (slipstream dlq -h)
  forget-link  forget a durable link that is gone for good (-yes ID)
  get       read a key from the instances' state: slipstream get KEY
  pub       send any message (or a raw frame), print the ACK or ERR and replies
  sub       connect as a client, print each message routed to it, ACK it
  cmd       send a command (slipstream.ping, ...), print each reply
  status    print an instance's status: links, outboxes, stage counters
  top       live rates per stage and per link (-once: one snapshot)
  tap       print each message leaving a stage, live (-stage NAME)
  graph     print a config's pipelines as a graph (DOT, -format mermaid)
  docs      print the configuration reference (Markdown, from the kind registry)
  version   print the version

Run 'slipstream <command> -h' for a command's flags.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return &usageError{"no command given"}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return runRun(ctx, rest, stdout, stderr)
	case "validate":
		return runValidate(rest, stdout, stderr)
	case "bench":
		return runBench(ctx, rest, stdout, stderr)
	case "dlq":
		return runDLQ(ctx, rest, stdout, stderr)
	case "forget-link":
		return runForgetLink(ctx, rest, stdout, stderr)
	case "get":
		return runGet(ctx, rest, stdout, stderr)
	case "pub":
		return runPub(ctx, rest, stdout, stderr)
	case "sub":
		return runSub(ctx, rest, stdout, stderr)
	case "cmd":
		return runCmd(ctx, rest, stdout, stderr)
	case "status":
		return runStatus(ctx, rest, stdout, stderr)
	case "top":
		return runTop(ctx, rest, stdout, stderr)
	case "tap":
		return runTap(ctx, rest, stdout, stderr)
	case "graph":
		return runGraph(rest, stdout, stderr)
	case "docs":
		return runDocs(rest, stdout)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, versionString())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return &usageError{fmt.Sprintf("unknown command %q", cmd)}
}
