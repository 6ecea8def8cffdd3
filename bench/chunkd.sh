#!/usr/bin/env bash
# Issue 3's benchmark: one chunkd on one data dir against fio, in the same
# run. Builds release, then runs ROUNDS rounds of the whole matrix; the
# binary prints per case the median over rounds and min..max, and writes
# every raw number to target/bench-chunkd-<time>.json.
#   bench/chunkd.sh [--install-fio] [ROUNDS [DIR [ringfs-bench chunkd args...]]]
# e.g. bench/chunkd.sh 5 /var/tmp --size-mib 4096 --runtime-secs 10
# --install-fio: `apt-get install -y fio` if fio is missing (only when asked).
set -euo pipefail
cd "$(dirname "$0")/.."
install_fio=0
if [ "${1:-}" = "--install-fio" ]; then
  install_fio=1
  shift
fi
rounds=${1:-5}
dir=${2:-/var/tmp}
shift $(( $# < 2 ? $# : 2 ))
if ! command -v fio >/dev/null 2>&1; then
  if [ "$install_fio" = 1 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y fio || { $sudo apt-get update && $sudo apt-get install -y fio; }
  else
    echo "fio is not installed: the run goes on without it (ratios n/a)." >&2
    echo "Re-run with --install-fio to apt-get install it." >&2
  fi
fi
cargo build --release -q -p chunkd -p ringfs-bench
out=target/bench-chunkd-$(date -u +%Y%m%dT%H%M%SZ).json
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (dirty)'), $(nproc) CPUs, $(uname -r)"
set -x
target/release/ringfs-bench chunkd \
  --chunkd-bin target/release/chunkd \
  --dir "$dir" \
  --rounds "$rounds" \
  --json "$out" \
  "$@"
