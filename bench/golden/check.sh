#!/usr/bin/env bash
# Bit-for-bit check of a restructuring: 50 steps of the default recipe, every metric but the timing.
#   bench/golden/check.sh record ZSQ TEACHER   writes bench/golden/default-50.jsonl
#   bench/golden/check.sh check ZSQ TEACHER    exits 0 when this zsq reproduces it exactly
# Same machine and --threads as the recording (float sums differ across ISAs and thread counts).
set -euo pipefail
mode=${1:?record or check}; zsq=${2:?path to zsq}; teacher=${3:?teacher.h5}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
"$zsq" quantize --teacher "$teacher" --out "$out/run" --generator-warmup 50 --steps 50 --checkpoint-every 0 \
  --threads 1 --seed 0 --log-level warn > "$out/log" 2>&1 || { cat "$out/log"; exit 1; }
sed -E 's/, "images_per_second": [^,}]*//' "$out/run/metrics.jsonl" > "$out/metrics.jsonl"
case $mode in
  record) cp "$out/metrics.jsonl" "$here/default-50.jsonl"; echo "recorded $(wc -l < "$here/default-50.jsonl") steps" ;;
  check) if cmp -s "$out/metrics.jsonl" "$here/default-50.jsonl"; then echo "bit for bit: $(wc -l < "$out/metrics.jsonl") steps"
         else diff "$here/default-50.jsonl" "$out/metrics.jsonl" | head -5; exit 1; fi ;;
  *) echo "mode must be record or check" >&2; exit 2 ;;
esac
