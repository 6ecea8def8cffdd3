#!/usr/bin/env bash
# Runs the wire micro-benchmarks RUNS times (default 5) and prints, per
# benchmark, the median over runs of criterion's point estimate and the
# spread (min..max), with throughput where the benchmark declares one.
#   bench/micro.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for i in $(seq 1 "$runs"); do
  cargo bench -q -p ringfs-bench --bench wire -- --warm-up-time 1 --measurement-time 3 >/dev/null
  mkdir -p "$out/$i"
  for f in target/criterion/*/*/new/estimates.json; do
    name=$(echo "$f" | sed 's|target/criterion/||; s|/new/estimates.json||')
    mkdir -p "$out/$i/$(dirname "$name")"
    cp "$f" "$out/$i/$name.json"
    cp "$(dirname "$f")/benchmark.json" "$out/$i/$name.bench.json"
  done
done
python3 - "$out" "$runs" <<'PY'
import json, os, statistics, sys
root, runs = sys.argv[1], int(sys.argv[2])
names = sorted({os.path.relpath(os.path.join(d, f), os.path.join(root, "1"))[:-5]
                for d, _, fs in os.walk(os.path.join(root, "1")) for f in fs
                if f.endswith(".json") and not f.endswith(".bench.json")})
print(f"{'benchmark':48} {'median':>12} {'min..max':>22} {'throughput (median)':>22}")
for n in names:
    ns = [json.load(open(f"{root}/{i}/{n}.json"))["median"]["point_estimate"] for i in range(1, runs + 1)]
    bench = json.load(open(f"{root}/1/{n}.bench.json"))
    tp = bench.get("throughput") or {}
    med = statistics.median(ns)
    def t(x):
        return f"{x/1000:.2f} us" if x >= 1000 else f"{x:.1f} ns"
    rate = ""
    if "Bytes" in tp:
        rate = f"{tp['Bytes'] / med:.2f} GB/s"   # bytes per ns = GB/s
    elif "Elements" in tp:
        rate = f"{tp['Elements'] / med * 1e3:.2f} M/s"
    print(f"{n:48} {t(med):>12} {t(min(ns)) + '..' + t(max(ns)):>22} {rate:>22}")
PY
