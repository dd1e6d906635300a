package main

import (
	"flag"
	"fmt"
	"io"
)

func runValidate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "", "config file to check (default: from the environment when URL_CONFIG or SLIPSTREAM_STORAGE_PATH is set, see docs/env.md; else the embedded pipelines.hcl)")
	printHCL := fs.Bool("print", false, "print the HCL that run would load (the file, or the translation of the environment)")
	if err := fs.Parse(args); err != nil {
		return &exitCodeError{code: exitUsage}
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("validate takes no arguments (got %q); pass the file with -c", fs.Args())}
	}
	name, src, err := configSource(*path)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(*path, stderr)
	if err != nil {
		return err
	}
	if *printHCL {
		_, err := stdout.Write(src)
		return err
	}
	fmt.Fprintf(stdout, "%s: ok (instance %q, %d source(s), %d pipeline(s), %d sink(s))\n",
		name, cfg.Instance.ID, len(cfg.Sources), len(cfg.Pipelines), len(cfg.Sinks))
	return nil
}
