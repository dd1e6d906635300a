package pipeline

import (
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// FormatDiagnostics renders diags one line each, errors first, each group in
// source order (file, line, column), as
//
//	pipelines.hcl:12:3: Unknown stage kind "dedupe"; known kinds: ack, decode, ...
//	pipelines.hcl:40:1: warning: Source "websocket_client" "peers" is not used; ...
//
// The result ends with a newline unless diags is empty.
func FormatDiagnostics(diags hcl.Diagnostics) string {
	sorted := make(hcl.Diagnostics, 0, len(diags))
	for _, d := range diags {
		if d != nil {
			sorted = append(sorted, d)
		}
	}
	sort.SliceStable(sorted, func(i, j int) bool {
		a, b := sorted[i], sorted[j]
		if (a.Severity == hcl.DiagError) != (b.Severity == hcl.DiagError) {
			return a.Severity == hcl.DiagError
		}
		return posLess(a.Subject, b.Subject)
	})
	var sb strings.Builder
	for _, d := range sorted {
		sb.WriteString(FormatDiagnostic(d))
		sb.WriteByte('\n')
	}
	return sb.String()
}

// FormatDiagnostic renders one diagnostic on one line:
// "file:line:col: Summary; Detail", with "warning: " before the summary of
// a warning. A diagnostic without a subject has no position prefix.
func FormatDiagnostic(d *hcl.Diagnostic) string {
	var sb strings.Builder
	if d.Subject != nil {
		sb.WriteString(formatPos(*d.Subject))
		sb.WriteString(": ")
	}
	if d.Severity == hcl.DiagWarning {
		sb.WriteString("warning: ")
	}
	sb.WriteString(oneLine(d.Summary))
	if detail := oneLine(d.Detail); detail != "" {
		sb.WriteString("; ")
		sb.WriteString(detail)
	}
	return sb.String()
}

// formatPos prints where a range starts: "file:line:col".
func formatPos(r hcl.Range) string {
	return fmt.Sprintf("%s:%d:%d", r.Filename, r.Start.Line, r.Start.Column)
}

// posLess orders subjects by file, line and column; no subject sorts first.
func posLess(a, b *hcl.Range) bool {
	switch {
	case a == nil || b == nil:
		return a == nil && b != nil
	case a.Filename != b.Filename:
		return a.Filename < b.Filename
	case a.Start.Line != b.Start.Line:
		return a.Start.Line < b.Start.Line
	}
	return a.Start.Column < b.Start.Column
}

// oneLine folds a multi-line text onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// errorAt makes an error diagnostic with a subject.
func errorAt(rng hcl.Range, summary, detail string) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: rng.Ptr()}
}

// warningAt makes a warning diagnostic with a subject.
func warningAt(rng hcl.Range, summary, detail string) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: summary, Detail: detail, Subject: rng.Ptr()}
}

// duplicateDiag reports a second definition at rng, naming the first.
func duplicateDiag(summary string, rng, prev hcl.Range) *hcl.Diagnostic {
	return errorAt(rng, summary, "previously defined at "+formatPos(prev))
}

// unknownKindDiag reports a kind name that is not registered, listing the
// known ones and suggesting the closest.
func unknownKindDiag(rng hcl.Range, class Class, name string, known []string) *hcl.Diagnostic {
	detail := "no " + string(class) + " kinds are registered"
	if len(known) > 0 {
		detail = "known kinds: " + strings.Join(known, ", ")
	}
	if s := suggest(name, known); s != "" {
		detail += fmt.Sprintf(". Did you mean %q?", s)
	}
	return errorAt(rng, fmt.Sprintf("Unknown %s kind %q", class, name), detail)
}

// suggest returns the candidate closest to given when it is within an edit
// distance of 2 (hcl's own threshold), else "".
func suggest(given string, candidates []string) string {
	best, bestDist := "", 3
	for _, c := range candidates {
		if d := editDistance(given, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
