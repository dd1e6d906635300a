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

# --- what the tests need: one small function per tool ------------------------
# Each is idempotent and quick when the tool is already there. The tests that
# use a tool skip without it, unless SLIPSTREAM_REQUIRE_TOOLS is set (below):
# here every one of them must run.

apt_updated=""
apt_install() { # package...
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  if [ -z "$apt_updated" ]; then
    $sudo apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# promtool (Debian package prometheus): `promtool check metrics` on a live
# instance's /metrics and `promtool check rules` on docs/alerts.yml.
ensure_promtool() {
  if command -v promtool >/dev/null 2>&1; then
    echo "promtool: $(command -v promtool)"
    return
  fi
  echo "promtool: installing the Debian package prometheus"
  apt_install prometheus
  # The package starts a Prometheus server; the tests need only promtool.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl stop prometheus || true
  fi
  command -v promtool >/dev/null
}

# Jaeger v2 all-in-one, built from the module pinned in tools/jaeger (a module
# of its own: Jaeger's dependencies never enter the main build). Rebuilt when
# the binary is missing or older than tools/jaeger/go.sum; a cold build takes
# about 6 minutes, a warm one seconds.
ensure_jaeger() {
  local bin=tools/jaeger/bin/jaeger
  if [ -n "${SLIPSTREAM_JAEGER:-}" ] && [ -x "$SLIPSTREAM_JAEGER" ]; then
    echo "jaeger: $SLIPSTREAM_JAEGER"
    return
  fi
  if [ ! -x "$bin" ] || [ tools/jaeger/go.sum -nt "$bin" ]; then
    echo "jaeger: building $bin (about 6 minutes the first time)"
    (cd tools/jaeger && go build -buildvcs=false -o bin/jaeger github.com/jaegertracing/jaeger/cmd/jaeger)
  fi
  export SLIPSTREAM_JAEGER="$PWD/$bin"
  echo "jaeger: $SLIPSTREAM_JAEGER"
}

# redis-server (Debian package redis-server): the redis sink and cluster-group
# dedup tests start their own servers on free loopback ports (--save ''), so
# the package's system service is not needed and is stopped if it started.
ensure_redis() {
  if command -v redis-server >/dev/null 2>&1; then
    echo "redis-server: $(command -v redis-server)"
    return
  fi
  echo "redis-server: installing the Debian package redis-server"
  apt_install redis-server
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
    systemctl stop redis-server || true
  fi
  command -v redis-server >/dev/null
}

# Node.js and the npm ws package of test/node (the Node protocol client test),
# installed from test/node/package-lock.json when node_modules is missing.
ensure_node_ws() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "node: installing the Debian packages nodejs and npm"
    apt_install nodejs npm
  fi
  if [ ! -f test/node/node_modules/ws/package.json ]; then
    echo "node ws: npm ci --prefix test/node"
    npm ci --prefix test/node --no-audit --no-fund
  fi
  echo "node: $(command -v node) $(node --version), ws $(node -p 'require("./test/node/node_modules/ws/package.json").version')"
}

step "go version"
go version

step "download modules"
go mod download

step "tools the tests need"
ensure_promtool
ensure_jaeger
ensure_redis
ensure_node_ws
export SLIPSTREAM_REQUIRE_TOOLS=1

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
