#!/usr/bin/env bash
# The measured mixed-precision front of one once-for-all checkpoint against its uniform bit-widths:
# every uniform bit-width, then `zsq extract --budget` at evenly spaced size budgets and BOPs budgets
# between the lowest and the highest uniform point, then at size and BOPs budgets together (the points of
# the straight lines between neighbouring uniform points), each extracted model evaluated by `zsq eval` on
# the Fashion-MNIST test set. Writes OUT/front.csv (and the extracted models); plot it with
#   /usr/bin/python3 -m zsq.mixed_plot OUT/front.csv --out OUT/front.png   (PYTHONPATH=python)
#   bench/mixed_front.sh RUN/checkpoint.h5 OUT [points per measure (6)] [extra zsq extract options...]
# KINDS="size bops joint" (default) picks the budget rows.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
zsq=${ZSQ:-$root/build/zsq}
ckpt=$1; out=$2; points=${3:-6}; shift $(( $# < 3 ? $# : 3 ))
mkdir -p "$out"
csv=$out/front.csv
echo "kind,budget,weight_bytes,mean_wbits,bops,kl,top1,file_bytes,seconds,mix" > "$csv"
field() { sed -nE "s/.*\"$1\": \"?([^,\"}]*)\"?.*/\1/p"; }
row() {  # kind budget file extract-args...
  local kind=$1 budget=$2 file=$3; shift 3
  local j; j=$("$zsq" extract --checkpoint "$ckpt" --out "$file" --json "$@" | tail -1)
  local e; e=$("$zsq" eval --model "$file" --json | tail -1)
  echo "$kind,$budget,$(echo "$j" | field weight_bytes),$(echo "$j" | field mean_wbits),$(echo "$j" | field bops),$(echo "$j" | field kl),$(echo "$e" | field top1),$(echo "$j" | field bytes),$(echo "$j" | field seconds),\"$(echo "$j" | sed -nE 's/.*"mix": "([^"]*)".*/\1/p')\"" >> "$csv"
  tail -1 "$csv" >&2
}
bits=$("$zsq" inspect "$ckpt" 2>/dev/null | sed -nE 's/^ *model_bits *[:=] *\[?([0-9, ]+)\]?.*/\1/p' | tr -d ' ' | head -1)
bits=${bits:-2,3,4,8}
for b in ${bits//,/ }; do row uniform "$b" "$out/uniform-$b.h5" --mix "$b" "$@"; done
# Budgets: `points` evenly spaced between the lowest and the second-highest uniform point (where mixing
# matters most), and two between the second-highest and the highest; by weight size, then by BOPs.
budgets() {  # column of front.csv
  awk -F, -v c="$1" 'NR > 1 && $1 == "uniform" {print $c}' "$csv" | sort -g |
    awk -v n="$points" '{v[++k] = $1} END {lo = v[1]; mid = v[k - 1]; hi = v[k]
      for (i = 1; i <= n; i++) printf "%.0f\n", lo + i / (n + 1) * (mid - lo)
      for (i = 1; i <= 2; i++) printf "%.0f\n", mid + i / 3 * (hi - mid)}'
}
kinds=" ${KINDS:-size bops joint} "
[[ $kinds == *" size "* ]] && { i=0; for size in $(budgets 3); do i=$((i + 1)); row size "$size" "$out/size-$i.h5" --budget "size=${size}B" "$@"; done; }
[[ $kinds == *" bops "* ]] && { i=0; for bops in $(budgets 5); do i=$((i + 1)); row bops "$bops" "$out/bops-$i.h5" --budget "bops=${bops}" "$@"; done; }
# Both at once: at fractions t of the way between neighbouring uniform points, the size and the BOPs of the
# straight line there, so that each of these mixes is compared with the line at equal size AND equal BOPs.
joint() {
  awk -F, 'NR > 1 && $1 == "uniform" {print $3, $5}' "$csv" | sort -g |
    awk '{s[++k] = $1; o[k] = $2} END {for (i = 1; i < k; i++) { n = i < k - 1 ? 3 : 1
      for (j = 1; j <= n; j++) { t = j / (n + 1); printf "%.0f,%.0f\n", s[i] + t * (s[i+1] - s[i]), o[i] + t * (o[i+1] - o[i]) } } }'
}
[[ $kinds == *" joint "* ]] && { i=0; for pair in $(joint); do i=$((i + 1)); row joint "${pair/,/+}" "$out/joint-$i.h5" --budget "size=${pair%,*}B,bops=${pair#*,}" "$@"; done; }
echo "wrote $csv" >&2
