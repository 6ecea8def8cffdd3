#!/usr/bin/env bash
# The cluster benchmark (issue 5): a `ringfs local` cluster (1 master,
# 3 chunkservers) on the disk under DIR, through the client library, against
# the MooseFS peer (mounted by ../shared/peers/moosefs/start.sh) and raw fio
# on the same disk, in the same run. Builds release, then runs ROUNDS rounds;
# the binary prints per metric the median over rounds and min..max, and the
# per-round ratios, and writes every raw number to
# $target/bench-cluster-<time>.json.
#   bench/cluster.sh [ROUNDS [DIR [ringfs-bench cluster args...]]]
# e.g. bench/cluster.sh 3 /var/tmp --size-mib 1024 --files 2000
# Without a mounted MooseFS (MOOSEFS=none), ringfs and fio only.
# CARGO_TARGET_DIR and CARGO_BUILD_JOBS are honoured (cargo's own variables).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
dir=${2:-/var/tmp}
shift $(( $# < 2 ? $# : 2 ))
target=${CARGO_TARGET_DIR:-target}
peer=${MOOSEFS:-../shared/peers/moosefs}
cargo build --release -q -p masterd -p chunkd -p ringfs-bench
out=$target/bench-cluster-$(date -u +%Y%m%dT%H%M%SZ).json
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (dirty)'), $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
peer_args=()
[ "$peer" != none ] && peer_args=(--moosefs "$peer")
set -x
"$target/release/ringfs-bench" cluster \
  --bin-dir "$target/release" \
  --dir "$dir" \
  --rounds "$rounds" \
  --json "$out" \
  "${peer_args[@]}" \
  "$@"
