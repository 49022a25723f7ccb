#!/usr/bin/env bash
# Runs a command (an mpiexec line) and checks how it failed:
#   check_failure.sh <expected exit: 0, 1 or nonzero> <expected line> <seconds> -- <command...>
# Passes when the command ends within <seconds> with that exit status and its output holds the
# expected line exactly once and no other line starting with "racesp:" (expected line "-": none).
set -u
expected_exit=$1 expected_line=$2 limit=$3
shift 4
start=$(date +%s)
output=$(timeout "$limit" "$@" 2>&1)
status=$?
elapsed=$(( $(date +%s) - start ))
echo "$output"
echo "--- exit $status after ${elapsed}s"
fail() { echo "FAIL: $*"; exit 1; }
[[ $status -eq 124 ]] && fail "timed out after $limit s (a hang)"
case $expected_exit in
  nonzero) [[ $status -ne 0 ]] || fail "exit 0, expected non-zero" ;;
  *) [[ $status -eq $expected_exit ]] || fail "exit $status, expected $expected_exit" ;;
esac
if [[ $expected_line != "-" ]]; then
  count=$(grep -cxF -- "$expected_line" <<<"$output")
  [[ $count -eq 1 ]] || fail "'$expected_line' printed $count times, expected once"
fi
others=$(grep '^racesp:' <<<"$output" | grep -vxF -- "$expected_line" | wc -l)
[[ $others -eq 0 ]] || fail "other racesp: lines printed"
echo "PASS"
