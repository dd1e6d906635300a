package main

import (
	"flag"
	"fmt"
	"io"
)

func runValidate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "", "config file to check (default: the embedded pipelines.hcl)")
	if err := fs.Parse(args); err != nil {
		return &exitCodeError{code: exitUsage}
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("validate takes no arguments (got %q); pass the file with -c", fs.Args())}
	}
	cfg, err := loadConfig(*path, stderr)
	if err != nil {
		return err
	}
	name := *path
	if name == "" {
		name = "embedded pipelines.hcl"
	}
	fmt.Fprintf(stdout, "%s: ok (instance %q, %d source(s), %d pipeline(s), %d sink(s))\n",
		name, cfg.Instance.ID, len(cfg.Sources), len(cfg.Pipelines), len(cfg.Sinks))
	return nil
}
