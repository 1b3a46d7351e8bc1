#!/usr/bin/env bash
# The once-for-all step of zsq against the same step in PyTorch-Python (../shared/bench/py_ofa_step.py:
# ResNet-20, 1x28x28, batch 128, 2 threads, bits 2,3,4,8 summed), interleaved, median of N runs each.
#   bench/py_compare.sh [runs (5)] [python (/usr/bin/python3)]
# Needs an idle machine: anything else running skews both sides.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${1:-5}; py=${2:-/usr/bin/python3}
script=${ZSQ_PY_OFA_STEP:-$root/../shared/bench/py_ofa_step.py}
bench=$root/build/bench/zsq_bench_ofa_step
[ -x "$bench" ] || { echo "build it first: cmake --build build --target zsq_bench_ofa_step" >&2; exit 1; }
[ -f "$script" ] || { echo "no $script (set ZSQ_PY_OFA_STEP)" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for r in $(seq "$runs"); do
  "$py" "$script" | sed -nE 's/.*fp32 step ([0-9.]+) ms.*OFA step ([0-9.]+) ms.*/\1 \2/p' >> "$tmp/py"
  "$bench" 1 8 2 resnet20 128 2>/dev/null | awk '/^FP32 step/ {f=$3} /^teacher forward/ {t=$3} /^once-for-all, sum/ {s=$3}
    /^once-for-all, min-norm/ {m=$3} END {print f, t, s, m}' >> "$tmp/zsq"
  echo "run $r/$runs: python $(tail -1 "$tmp/py"), zsq $(tail -1 "$tmp/zsq")" >&2
done
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
py_fp=$(cut -d' ' -f1 "$tmp/py" | median); py_ofa=$(cut -d' ' -f2 "$tmp/py" | median)
z_fp=$(cut -d' ' -f1 "$tmp/zsq" | median); z_t=$(cut -d' ' -f2 "$tmp/zsq" | median)
z_sum=$(cut -d' ' -f3 "$tmp/zsq" | median); z_mn=$(cut -d' ' -f4 "$tmp/zsq" | median)
awk -v pf="$py_fp" -v po="$py_ofa" -v zf="$z_fp" -v zt="$z_t" -v zs="$z_sum" -v zm="$z_mn" -v n="$runs" 'BEGIN {
  ref = 4 * zf - 3 * zt
  printf "ResNet-20, batch 128, 2 threads, bits 2,3,4,8; median of %d interleaved runs (ms per step)\n", n
  printf "%-34s %8s %12s %16s\n", "step", "ms", "x Python OFA", "x (4 FP32 + T)"
  printf "%-34s %8.1f %12.2f %16s\n", "PyTorch-Python FP32 step", pf, pf / po, "-"
  printf "%-34s %8.1f %12.2f %16s\n", "PyTorch-Python once-for-all (sum)", po, 1, "-"
  printf "%-34s %8.1f %12.2f %16.2f\n", "zsq FP32 step (KD)", zf, zf / po, zf / ref
  printf "%-34s %8.1f %12.2f %16.2f\n", "zsq once-for-all, sum", zs, zs / po, zs / ref
  printf "%-34s %8.1f %12.2f %16.2f\n", "zsq once-for-all, min-norm", zm, zm / po, zm / ref
}'
