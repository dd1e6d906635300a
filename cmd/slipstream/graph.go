package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/slipstream-sync/slipstream/pipeline"
)

const graphUsage = `Usage: slipstream graph [-c FILE] [-format dot|mermaid]

Print the pipelines of a config file (default: the embedded pipelines.hcl)
as a graph: sources, each pipeline's stages in order, sinks. DOT renders
with Graphviz (slipstream graph -c f.hcl | dot -Tsvg > f.svg); mermaid
renders in Markdown viewers that support it.
`

func runGraph(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("graph", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, graphUsage); fs.PrintDefaults() }
	path := fs.String("c", "", "config file (default: the embedded pipelines.hcl)")
	format := fs.String("format", "dot", "dot or mermaid")
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("graph takes no arguments (got %q); pass the file with -c", fs.Args())}
	}
	if *format != "dot" && *format != "mermaid" {
		return &usageError{fmt.Sprintf("-format %q: want dot or mermaid", *format)}
	}
	cfg, err := loadConfig(*path, stderr)
	if err != nil {
		return err
	}
	if *format == "mermaid" {
		writeMermaid(stdout, cfg)
	} else {
		writeDOT(stdout, cfg)
	}
	return nil
}

// graphEdges lists the graph: its nodes (id, label, shape: source, stage,
// sink) and edges, pipeline by pipeline. Stage nodes are per pipeline.
type graphNode struct{ id, label, class string }

func graphOf(cfg *pipeline.Config) (nodes []graphNode, edges [][2]string) {
	seen := map[string]bool{}
	add := func(n graphNode) {
		if !seen[n.id] {
			seen[n.id] = true
			nodes = append(nodes, n)
		}
	}
	id := func(parts ...string) string {
		return strings.NewReplacer(".", "_", "-", "_", "/", "_", " ", "_").Replace(strings.Join(parts, "__"))
	}
	for _, p := range cfg.Pipelines {
		var prev []string
		for _, s := range p.Sources {
			n := graphNode{id: id("source", s), label: s, class: "source"}
			add(n)
			prev = append(prev, n.id)
		}
		for _, st := range p.Stages {
			n := graphNode{id: id("p", p.Name, st.Kind), label: p.Name + ": " + st.Kind, class: "stage"}
			add(n)
			for _, f := range prev {
				edges = append(edges, [2]string{f, n.id})
			}
			prev = []string{n.id}
		}
		for _, s := range p.Sinks {
			n := graphNode{id: id("sink", s), label: s, class: "sink"}
			add(n)
			for _, f := range prev {
				edges = append(edges, [2]string{f, n.id})
			}
		}
	}
	return nodes, edges
}

func writeDOT(w io.Writer, cfg *pipeline.Config) {
	nodes, edges := graphOf(cfg)
	shape := map[string]string{"source": "invhouse", "stage": "box", "sink": "house"}
	fmt.Fprintf(w, "digraph %q {\n  rankdir=LR;\n", "slipstream "+cfg.Instance.ID)
	for _, n := range nodes {
		fmt.Fprintf(w, "  %s [label=%q, shape=%s];\n", n.id, n.label, shape[n.class])
	}
	for _, e := range edges {
		fmt.Fprintf(w, "  %s -> %s;\n", e[0], e[1])
	}
	fmt.Fprintln(w, "}")
}

func writeMermaid(w io.Writer, cfg *pipeline.Config) {
	nodes, edges := graphOf(cfg)
	open := map[string][2]string{"source": {"[/", "/]"}, "stage": {"[", "]"}, "sink": {"[\\", "\\]"}}
	fmt.Fprintln(w, "flowchart LR")
	for _, n := range nodes {
		b := open[n.class]
		fmt.Fprintf(w, "  %s%s\"%s\"%s\n", n.id, b[0], strings.ReplaceAll(n.label, `"`, "#quot;"), b[1])
	}
	for _, e := range edges {
		fmt.Fprintf(w, "  %s --> %s\n", e[0], e[1])
	}
}
