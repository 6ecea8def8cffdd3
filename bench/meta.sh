#!/usr/bin/env bash
# The masterd benchmark (NNThroughputBenchmark-style): one masterd started
# by the bench on a temp data dir under /var/tmp (or --dir), clients over
# loopback. Builds release, then runs ROUNDS rounds, each on a fresh master:
# mkdirs, creates, stats, renames, then kill -9 + restart and memory per
# file. The binary prints per metric the median over rounds and min..max,
# and writes every raw number to $target/bench-meta-<time>.json.
#   bench/meta.sh [ROUNDS [ringfs-bench meta args...]]
# e.g. bench/meta.sh 3 --files 200000 --clients 16
# CARGO_TARGET_DIR and CARGO_BUILD_JOBS are honoured (cargo's own variables).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
shift $(( $# < 1 ? $# : 1 ))
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p masterd -p ringfs-bench
out=$target/bench-meta-$(date -u +%Y%m%dT%H%M%SZ).json
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (dirty)'), $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
set -x
"$target/release/ringfs-bench" meta \
  --masterd "$target/release/masterd" \
  --rounds "$rounds" \
  --json "$out" \
  "$@"
