#!/usr/bin/env bash
# A rank that blocks, exits or throws mid-run ends the whole two-rank job with a
# non-zero exit, within the deadline, naming the rank. Never hangs: every run
# is bounded by `timeout`.
# usage: fault_test.sh MPIRUN FAULT_BINARY
set -u
mpirun_bin="$1"
fault="$2"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
failed=0
check() {  # check MODE "expected stderr part" MAX_SECONDS
  local mode="$1" part="$2" max="$3" start end code
  start=$(date +%s)
  timeout 90 "$mpirun_bin" --oversubscribe -np 2 "$fault" "$mode" >/tmp/zsq-fault.out 2>/tmp/zsq-fault.err
  code=$?
  end=$(date +%s)
  if [ "$code" -ne 0 ] && [ "$code" -ne 124 ] && [ $((end - start)) -le "$max" ] &&
     grep -qF -- "$part" /tmp/zsq-fault.err; then
    echo "ok: $mode -> exit $code after $((end - start)) s, '$part'"
  else
    echo "FAILED: $mode -> exit $code after $((end - start)) s (limit $max s); stderr:"
    head -c 1500 /tmp/zsq-fault.err
    failed=1
  fi
}
check block "[rank 0/2] error: collective #2 (all_reduce, 4096 bytes) did not finish within 2 s" 30
check throw "[rank 1/2] error: injected failure; ending the job" 30
# Open MPI names the process as [[job,1],RANK]
check exit "],1]" 30
exit "$failed"
