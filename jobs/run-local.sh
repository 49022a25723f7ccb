#!/usr/bin/env bash
# RaceSP attention on this machine, without SLURM: mpirun -np RANKS racesp attention, with the
# output, metrics and log in a fresh run folder.
#
#   jobs/run-local.sh [-n RANKS] [--input FILE] [racesp attention options ...]
#
#   e.g. jobs/run-local.sh -n 4 --input seq.h5 --causal --backward
#        DEVICE=cuda RANKS=4 jobs/run-local.sh --input seq.h5      (a 4-GPU workstation)
#
# Parameters: environment variables or the options named beside them; every other argument goes
# to `racesp attention` unchanged.
#   INPUT        HDF5 input with q, k, v (and do for --backward)          required; --input FILE
#   RANKS        MPI ranks                                                default 2; -n, --ranks
#   DEVICE       racesp --device: cpu, or cuda for one rank per GPU       default cpu
#                (with cuda each rank gets CUDA_VISIBLE_DEVICES=<its local rank's GPU>)
#   RACESP_BIN   the racesp binary   default build/release/src/cli/racesp in this checkout, else
#                                    racesp on PATH
#   RACESP_ARGS  more racesp attention options, split on spaces           default none
#   MPIRUN       the mpirun command                                       default mpirun
#   MPIRUN_ARGS  extra mpirun options                                     default none
#   RUNS_DIR     where run folders go                     default runs/ in this checkout
#   RUN_NAME     the run folder's name                    default local-<date>-<time>-<pid>
#   OMP_NUM_THREADS  threads per rank                     default cores / RANKS, at least 1
#   NCCL_NVLS_ENABLE default 0: NVLink multicast off (it can put a shared host's GPUs out of service)
#
# Results, in $RUNS_DIR/$RUN_NAME/: output.h5, metrics.json (racesp's summary), run.json (ranks,
# exit code, start and end), run.log (everything printed), command.txt (the exact command).
# A missing binary or input fails at once with a one-line error and exit code 1; otherwise the exit
# code is mpirun's.
set -euo pipefail

me=run-local.sh
die() { echo "$me: error: $*" >&2; exit 1; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INPUT=${INPUT:-}
RANKS=${RANKS:-2}
DEVICE=${DEVICE:-cpu}
MPIRUN=${MPIRUN:-mpirun}
RUNS_DIR=${RUNS_DIR:-$root/runs}
RUN_NAME=${RUN_NAME:-local-$(date +%Y%m%d-%H%M%S)-$$}
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}

args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n|--ranks) [[ $# -ge 2 ]] || die "$1 needs a number"; RANKS=$2; shift 2 ;;
    --ranks=*) RANKS=${1#--ranks=}; shift ;;
    --input) [[ $# -ge 2 ]] || die "--input needs a file"; INPUT=$2; shift 2 ;;
    --input=*) INPUT=${1#--input=}; shift ;;
    --output|--output=*|--metrics|--metrics=*)
      die "$1: the run writes output.h5 and metrics.json into its run folder itself" ;;
    --device|--device=*) die "$1: set DEVICE=cpu|cuda instead, so that GPUs are bound per rank" ;;
    -h|--help) sed -n '2,29p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
# Deliberately split on spaces: RACESP_ARGS="--causal --tables 4".
# shellcheck disable=SC2206
if [[ -n "${RACESP_ARGS:-}" ]]; then args+=(${RACESP_ARGS}); fi

# --- fail early, before making a run folder ----------------------------------------------------------
[[ "$RANKS" =~ ^[1-9][0-9]*$ ]] || die "RANKS must be a positive integer, not '$RANKS'"
[[ "$DEVICE" == cpu || "$DEVICE" == cuda ]] || die "DEVICE must be cpu or cuda, not '$DEVICE'"
if [[ -z "${RACESP_BIN:-}" ]]; then
  if [[ -x "$root/build/release/src/cli/racesp" ]]; then
    RACESP_BIN=$root/build/release/src/cli/racesp
  else
    RACESP_BIN=$(command -v racesp || true)
  fi
fi
[[ -n "$RACESP_BIN" ]] \
  || die "racesp binary not found: build it (cmake --preset release && cmake --build --preset release) or set RACESP_BIN"
[[ -x "$RACESP_BIN" ]] || die "racesp binary not found or not executable: $RACESP_BIN (set RACESP_BIN)"
[[ -n "$INPUT" ]] || die "no input: set INPUT=FILE.h5 or pass --input FILE.h5 (racesp generate makes one)"
[[ -f "$INPUT" && -r "$INPUT" ]] || die "input file not found: $INPUT"
INPUT=$(cd "$(dirname "$INPUT")" && pwd)/$(basename "$INPUT")
command -v "$MPIRUN" >/dev/null || die "$MPIRUN not found: install Open MPI (jobs/install-deps.sh) or set MPIRUN"
if [[ $(id -u) -eq 0 && -z "${OMPI_ALLOW_RUN_AS_ROOT:-}" ]]; then
  die "running as root: Open MPI's mpirun refuses unless OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 are set"
fi

# --- run folder and log ----------------------------------------------------------------------------
run_dir=$RUNS_DIR/$RUN_NAME
mkdir -p "$run_dir" || die "cannot create the run folder $run_dir"
run_dir=$(cd "$run_dir" && pwd)
exec > >(tee -a "$run_dir/run.log") 2>&1
tee_pid=$!
start_epoch=$(date +%s)
start_iso=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# nproc honours OMP_NUM_THREADS; the cores this process may use are wanted here.
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / RANKS > 0 ? cores / RANKS : 1 ))}

finish() {
  local rc=$?
  local end_epoch
  end_epoch=$(date +%s)
  cat >"$run_dir/run.json" <<EOF
{"run": "$RUN_NAME", "script": "$me", "host": "$(hostname -s)", "ranks": $RANKS,
 "omp_num_threads": $OMP_NUM_THREADS, "device": "$DEVICE", "input": "$INPUT",
 "start": "$start_iso", "end": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
 "elapsed_s": $((end_epoch - start_epoch)), "exit_code": $rc}
EOF
  ((rc == 0)) && echo "$me: done in $((end_epoch - start_epoch)) s; results in $run_dir" \
              || echo "$me: failed with exit code $rc; log in $run_dir/run.log"
  exec >&- 2>&-
  wait "$tee_pid" 2>/dev/null || true
  exit "$rc"
}
trap finish EXIT

# --- launch ----------------------------------------------------------------------------------------
# shellcheck disable=SC2206
launch=("$MPIRUN" -np "$RANKS" -x OMP_NUM_THREADS -x NCCL_NVLS_ENABLE ${MPIRUN_ARGS:-})
# More ranks than cores: Open MPI refuses unless told that oversubscribing is intended.
if (( RANKS > cores )); then
  echo "$me: $RANKS ranks on $cores cores: oversubscribing"
  launch+=(--oversubscribe)
fi
if [[ "$DEVICE" == cuda ]]; then
  # One rank per GPU: each rank keeps the GPU at its local rank among those visible.
  # shellcheck disable=SC2016  # expanded by each rank's bash, not here
  launch+=(bash -c '
lr=${OMPI_COMM_WORLD_LOCAL_RANK:?not started by Open MPI}
IFS=, read -r -a visible <<<"${CUDA_VISIBLE_DEVICES:-}"
if ((${#visible[@]} == 0)); then export CUDA_VISIBLE_DEVICES=$lr
elif ((lr < ${#visible[@]})); then export CUDA_VISIBLE_DEVICES=${visible[$lr]}
else echo "rank $OMPI_COMM_WORLD_RANK: local rank $lr but only ${#visible[@]} GPUs visible: one rank per GPU" >&2; exit 1
fi
echo "rank $OMPI_COMM_WORLD_RANK: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES" >&2
exec "$@"' racesp-bind-gpu)
fi
racesp_cmd=("$RACESP_BIN" attention --device "$DEVICE" --input "$INPUT" --output "$run_dir/output.h5"
            --metrics "$run_dir/metrics.json" "${args[@]}")
printf '%q ' "${launch[@]}" "${racesp_cmd[@]}" >"$run_dir/command.txt"
echo >>"$run_dir/command.txt"
echo "$me: $RANKS ranks, $OMP_NUM_THREADS threads each, device $DEVICE; run folder $run_dir"
"${launch[@]}" "${racesp_cmd[@]}"
