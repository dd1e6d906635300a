#!/usr/bin/env bash
# The whole test suite, as README.md documents and .ci/run calls.
#
# It installs or starts what the tests need when it is missing, then runs:
# gofmt and go vet checks, the tests with -race, a bounded fuzzing run of each
# fuzz target, and the benchmarks for a short -benchtime so they cannot rot.
#
#   scripts/test.sh            everything
#   FUZZTIME=30s scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="/usr/local/go/bin:$PATH"
FUZZTIME="${FUZZTIME:-20s}"
BENCHTIME="${BENCHTIME:-200x}"

step() { printf '\n=== %s\n' "$*"; }

step "go version"
go version

step "download modules"
go mod download

step "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './tools/*'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change these files; run gofmt -w on them:"
  echo "$unformatted"
  exit 1
fi

step "go vet"
go vet ./...

step "fuzz (each target for $FUZZTIME)"
fuzz() { # package target
  go test -run='^$' -fuzz="^$2\$" -fuzztime="$FUZZTIME" "$1"
}
fuzz . FuzzDecode
fuzz ./pipeline FuzzLoad

step "benchmarks (short, figures not asserted)"
bench_out=$(mktemp)
go test -run='^$' -bench=. -benchtime="$BENCHTIME" -benchmem ./... > "$bench_out" || { cat "$bench_out"; exit 1; }
grep -E '^(Benchmark|ok|FAIL)' "$bench_out"; rm -f "$bench_out"

step "tests (-race)"
go test -race -count=1 -timeout 20m ./...
