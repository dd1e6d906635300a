#!/usr/bin/env bash
# Latency percentiles against offered load, as a PNG for BENCHMARKS.md.
#
# Runs `slipstream bench` in open loop (the embedded default pipeline,
# in-process, fsync before ACK) at each rate of RATES for DURATION, keeps
# every run's JSON summary in bench/sweep/, writes the table bench/sweep.tsv
# and renders docs/latency-vs-load.png with gnuplot.
#
#   scripts/bench-plot.sh
#   RATES="1000 5000 10000" DURATION=10s scripts/bench-plot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
RATES="${RATES:-1000 2500 5000 7500 10000 15000 20000 30000}"
DURATION="${DURATION:-5s}"
OUT_PNG="${OUT_PNG:-docs/latency-vs-load.png}"

need() { # command package
  command -v "$1" >/dev/null 2>&1 && return
  echo "installing $2 (for $1)"
  apt-get update -qq && apt-get install -y -qq "$2" >/dev/null
}
need jq jq
need gnuplot gnuplot-nox

mkdir -p bench/sweep
bin=$(mktemp -d)/slipstream
go build -o "$bin" ./cmd/slipstream

tsv=bench/sweep.tsv
printf 'offered\tdelivered\tp50\tp90\tp99\tp99_9\tmax\n' > "$tsv"
for r in $RATES; do
  json="bench/sweep/rate-$r.json"
  echo "rate $r msgs/s for $DURATION"
  "$bin" bench -rate "$r" -duration "$DURATION" -warmup "$((r / 2))" -json -progress 0 > "$json"
  jq -r --arg r "$r" '[$r, (.result.delivered_msgs_per_s[0]), .result.delivery_latency_ms.p50,
      .result.delivery_latency_ms.p90, .result.delivery_latency_ms.p99, .result.delivery_latency_ms.p99_9,
      .result.delivery_latency_ms.max] | @tsv' "$json" >> "$tsv"
done
column -t "$tsv"

gnuplot <<GP
set terminal pngcairo size 900,560 font ",11" noenhanced
set output "$OUT_PNG"
set title "Slipstream: publish -> delivery latency against offered load (1 publisher, 1 subscriber, fsync before ACK)"
set xlabel "offered load (msgs/s)"
set ylabel "latency (ms, log scale)"
set logscale y
set grid
set key top left
set datafile separator "\t"
plot "$tsv" using 1:3 skip 1 with linespoints title "p50", \
     "" using 1:4 skip 1 with linespoints title "p90", \
     "" using 1:5 skip 1 with linespoints title "p99", \
     "" using 1:6 skip 1 with linespoints title "p99.9"
GP
echo "wrote $OUT_PNG and $tsv"
