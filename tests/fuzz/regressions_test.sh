#!/usr/bin/env bash
# Files the fuzzers (launch/fuzz) found that crash or hang Debian's libhdf5 1.10.8: zsq must end with
# one clear line naming the file and exit 1, not "Segmentation fault" or never.
#   regressions_test.sh ZSQ_BINARY
set -uo pipefail
zsq="$1"
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/regressions"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failures=0
check() {  # check FILE ARGS...: zsq ARGS on a copy of FILE exits 1 with one line that names it
  local file="$1"; shift
  cp "$dir/$file" "$work/$file"
  "$zsq" "$@" "$work/$file" --threads 1 > /dev/null 2> "$work/err"
  local rc=$?
  if [ "$rc" -eq 1 ] && [ "$(wc -l < "$work/err")" -eq 1 ] && grep -q "^zsq.*error: .*$work/$file" "$work/err"; then
    echo "ok: $* $file -> exit 1: $(cat "$work/err")"
  else
    echo "FAIL: $* $file -> exit $rc, stderr: $(head -c 400 "$work/err")"
    failures=$((failures + 1))
  fi
}
check model-libhdf5-vlen-attribute.h5 eval --model
check model-libhdf5-vlen-attribute.h5 eval --checkpoint
check h5_dataset-libhdf5-segv.h5 inspect
check student-libhdf5-global-heap-loop.h5 eval --checkpoint  # libhdf5 loops: ended after 60 s
exit $failures
