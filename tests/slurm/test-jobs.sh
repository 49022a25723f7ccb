#!/usr/bin/env bash
# The jobs/ scripts against a real SLURM: starts a one-node cluster on loopback
# (tests/slurm/cluster.sh: munged with a generated key, slurmctld, slurmd, state in a temporary
# folder), submits the scripts with sbatch, waits for them, and checks
#   - attention-cpu.sbatch under `srun --mpi=pmix` and under mpirun inside the allocation:
#     COMPLETED, exit code 0, output equal to a direct mpirun run (h5diff, 1e-6 relative), metrics
#     JSON with the same keys and 2 ranks (not two 1-rank runs);
#   - attention-gpu.sbatch on two GPUs declared as GRES (placeholders where the machine has none),
#     run with --device cpu: one GPU per rank through CUDA_VISIBLE_DEVICES, same output;
#   - scaling-sweep.sbatch as a 4-task job array (srun), and as one job running every combination
#     (weak scaling, mpirun): a JSON-lines file per combination, racesp's ranks and tokens in it;
#   - run-local.sh outside SLURM: same output;
#   - a job with a missing input, and one where racesp itself rejects an option: FAILED in
#     `scontrol show job` and in the job completion log, the error in the job's log;
# then stops exactly the daemons it started (on any exit).
#
#   tests/slurm/test-jobs.sh RACESP_BIN
#
# Exit codes: 0 passed, 1 failed, 77 skipped (no SLURM or munge binaries installed).
# Environment: KEEP_SLURM_TEST=1 keeps the temporary folder (cluster logs, runs) after a pass;
# after a failure it is always kept. SLURM_TEST_DEADLINE: seconds to wait for the jobs (300).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
[[ $# -eq 1 ]] || { echo "usage: $0 RACESP_BIN" >&2; exit 2; }
bin=$1

export PATH="$PATH:/usr/sbin:/sbin"
for b in munged slurmctld slurmd sbatch srun squeue scontrol sinfo scancel; do
  if ! command -v "$b" >/dev/null 2>&1; then
    echo "SKIP: $b is not installed (jobs/install-deps.sh --with-slurm installs SLURM and munge)"
    exit 77
  fi
done
for b in mpirun h5diff; do
  command -v "$b" >/dev/null 2>&1 || { echo "FAIL: $b not found" >&2; exit 1; }
done
[[ -x "$bin" ]] || { echo "FAIL: racesp binary not found: $bin" >&2; exit 1; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

t0=$SECONDS
tmp=$(mktemp -d "${TMPDIR:-/tmp}/racesp-slurm.XXXXXX")
# munged wants every folder above its socket to be searchable by all (mktemp makes 0700).
chmod 0711 "$tmp"
cluster=$tmp/cluster
failures=0

cleanup() {
  local rc=$?
  "$here/cluster.sh" stop "$cluster" || true
  if [[ $rc -eq 0 && $failures -eq 0 && -z "${KEEP_SLURM_TEST:-}" ]]; then
    rm -rf "$tmp"
  else
    echo "kept $tmp (cluster logs in $cluster/log, runs in $tmp/runs)" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

say() { echo "[slurm-test $((SECONDS - t0))s] $*"; }
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
json() { cmake -DFILE="$1" ${2:+-DLINES=ON} -P "$here/json.cmake"; }
# The value of one top-level key of a JSON file ("" when absent).
json_get() { json "$1" | sed -n "s/^$2=//p" | head -1; }

# --- the cluster ---------------------------------------------------------------------------------
SLURM_TEST_GPUS=2 "$here/cluster.sh" start "$cluster"
# shellcheck source=/dev/null
source "$cluster/env.sh"
say "cluster up: $(sinfo -h -o '%P %D nodes, %c CPUs, %G, state %T')"

# mpirun refuses root unless told (CI runs as root); the jobs inherit this environment.
if [[ $(id -u) -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# One thread per rank everywhere, so every run does the same arithmetic in the same order.
export OMP_NUM_THREADS=1
export RACESP_BIN=$bin RUNS_DIR=$tmp/runs
unset INPUT LAUNCHER RACESP_ARGS SRUN_ARGS MPIRUN_ARGS GPU_BIND DEVICE RANKS_LIST TOKENS_LIST BENCH_ARGS

# --- input and the direct reference run ------------------------------------------------------------
# Every step has its own time limit, so that the test ends (and stops its daemons) well before
# ctest's TIMEOUT, which would kill it without running the EXIT trap.
input=$tmp/input.h5
timeout 60 mpirun -np 2 --oversubscribe "$bin" generate --output "$input" --batch 1 --tokens 384 --heads 2 \
  --dim 16 --seed 11 --with-grad
attn_args=(--causal --backward --tables 2 --planes 3 --quiet)
timeout 60 mpirun -np 2 --oversubscribe "$bin" attention --input "$input" --output "$tmp/reference.h5" \
  --metrics "$tmp/reference.json" "${attn_args[@]}"
[[ -f "$tmp/reference.h5" && -f "$tmp/reference.json" ]] || { echo "FAIL: the direct run wrote no output" >&2; exit 1; }
say "direct mpirun run done"

# --- submissions -----------------------------------------------------------------------------------
# Jobs are submitted from a folder of their own, as a user would from a project folder.
mkdir -p "$tmp/submit"
cd "$tmp/submit"
small=(--nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=00:10:00)
submit() { sbatch --parsable "$@" | cut -d';' -f1; }

j_srun=$(INPUT=$input LAUNCHER=srun submit -J cpu-srun "${small[@]}" \
  "$root/jobs/attention-cpu.sbatch" "${attn_args[@]}")
j_mpirun=$(submit -J cpu-mpirun "${small[@]}" \
  "$root/jobs/attention-cpu.sbatch" --input "$input" --launcher mpirun "${attn_args[@]}")
j_gpu=$(INPUT=$input DEVICE=cpu submit -J gpu-bind "${small[@]}" --gpus-per-node=2 \
  "$root/jobs/attention-gpu.sbatch" "${attn_args[@]}")
j_missing=$(INPUT=$tmp/missing.h5 submit -J missing-input "${small[@]}" \
  "$root/jobs/attention-cpu.sbatch" --causal)
j_badopt=$(INPUT=$input submit -J bad-option "${small[@]}" \
  "$root/jobs/attention-cpu.sbatch" --planes 0)
j_sweep=$(RANKS_LIST="1 2" TOKENS_LIST="256 512" submit -J sweep --array=0-3 --nodes=1 --ntasks=2 \
  --cpus-per-task=1 --time=00:10:00 "$root/jobs/scaling-sweep.sbatch" \
  --heads 2 --dim 16 --tables 2 --planes 3 --causal --repeats 2 --warmup 1)
# Without --array: every combination in one job, here weak scaling under mpirun.
j_weak=$(SCALING=weak LAUNCHER=mpirun RANKS_LIST="1 2" TOKENS_LIST="128" submit -J sweep-weak \
  --nodes=1 --ntasks=2 --cpus-per-task=1 --time=00:10:00 "$root/jobs/scaling-sweep.sbatch" \
  --heads 2 --dim 16 --tables 2 --planes 3 --repeats 1 --warmup 0)
say "submitted: cpu-srun $j_srun, cpu-mpirun $j_mpirun, gpu-bind $j_gpu, missing-input $j_missing, bad-option $j_badopt, sweep $j_sweep (array 0-3), sweep-weak $j_weak"

# The local launcher runs meanwhile, outside SLURM, on the same input.
RUN_NAME=local timeout 60 "$root/jobs/run-local.sh" -n 2 --input "$input" "${attn_args[@]}" \
  || fail "run-local.sh exited with $?"

# --- wait ----------------------------------------------------------------------------------------------
deadline=$((SECONDS + ${SLURM_TEST_DEADLINE:-300}))
while [[ -n "$(squeue -h -o %i)" ]]; do
  if ((SECONDS > deadline)); then
    squeue >&2
    echo "FAIL: jobs still queued or running after ${SLURM_TEST_DEADLINE:-300}s" >&2
    exit 1
  fi
  sleep 1
done
say "all jobs left the queue"

# JobState and ExitCode of a job (or array task, as ID_TASK) from scontrol.
job_field() {
  scontrol -o show job "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1
}
run_of() { echo "$RUNS_DIR/$1-$2"; }

expect_state() {  # job, name, state, exit code
  local state code
  state=$(job_field "$1" JobState)
  code=$(job_field "$1" ExitCode)
  if [[ "$state" == "$3" && "$code" == "$4" ]]; then
    say "$2 (job $1): $state, exit code $code"
  else
    fail "$2 (job $1): JobState=$state ExitCode=$code, expected $3 $4"
    [[ -f "slurm-$1.out" ]] && sed 's/^/    /' "slurm-$1.out" >&2
  fi
}

same_output() {  # name, output file
  if [[ ! -f "$2" ]]; then
    fail "$1: no output file $2"
  elif h5diff -p 1e-6 "$tmp/reference.h5" "$2" >/dev/null; then
    say "$1: output equals the direct run (h5diff -p 1e-6)"
  else
    fail "$1: output differs from the direct run:"
    h5diff -r -p 1e-6 "$tmp/reference.h5" "$2" 2>&1 | head -n 20 >&2 || true
  fi
}

# Relative difference of two numbers at most 1e-6 (awk: the shell has no floating point).
close() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; m = (a < 0 ? -a : a);
                                            exit !(a != "" && b != "" && d <= 1e-6 * (m > 1 ? m : 1)) }'; }

same_metrics() {  # name, metrics file
  local want got ranks dbeta
  if [[ ! -f "$2" ]]; then
    fail "$1: no metrics file $2"
    return
  fi
  want=$(json "$tmp/reference.json" | cut -d= -f1) || { fail "$1: reference metrics unreadable"; return; }
  got=$(json "$2" | cut -d= -f1) || { fail "$1: metrics $2 are not a JSON object"; return; }
  [[ "$want" == "$got" ]] || fail "$1: metrics keys differ from the direct run's: ${got//$'\n'/ } vs ${want//$'\n'/ }"
  # Two ranks in one MPI world: a launcher that failed to wire the ranks up (no PMIx) would give
  # two 1-rank runs instead.
  ranks=$(json_get "$2" machine.ranks)
  [[ "$ranks" == 2 ]] || fail "$1: metrics say machine.ranks=$ranks, expected 2"
  [[ "$(json_get "$2" tokens)" == "$(json_get "$tmp/reference.json" tokens)" ]] \
    || fail "$1: metrics say tokens=$(json_get "$2" tokens), the direct run $(json_get "$tmp/reference.json" tokens)"
  dbeta=$(json_get "$2" dbeta)
  close "$dbeta" "$(json_get "$tmp/reference.json" dbeta)" \
    || fail "$1: metrics say dbeta=$dbeta, the direct run $(json_get "$tmp/reference.json" dbeta)"
  say "$1: metrics JSON has the direct run's keys, machine.ranks=$ranks, tokens=$(json_get "$2" tokens), dbeta=$dbeta"
}

# --- the attention jobs ------------------------------------------------------------------------------
for pair in "cpu-srun:$j_srun" "cpu-mpirun:$j_mpirun" "gpu-bind:$j_gpu"; do
  name=${pair%%:*} id=${pair#*:}
  run=$(run_of "$name" "$id")
  expect_state "$id" "$name" COMPLETED 0:0
  same_output "$name" "$run/output.h5"
  same_metrics "$name" "$run/metrics.json"
  [[ "$(json_get "$run/job.json" exit_code)" == 0 ]] || fail "$name: job.json has no exit_code 0"
  [[ -s "$run/job.log" && -s "$run/command.txt" ]] || fail "$name: job.log or command.txt missing in $run"
done
grep -q -- '--mpi=pmix' "$(run_of cpu-srun "$j_srun")/command.txt" \
  || fail "cpu-srun: the job did not launch with srun --mpi=pmix"
grep -q '^mpirun ' "$(run_of cpu-mpirun "$j_mpirun")/command.txt" \
  || fail "cpu-mpirun: the job did not launch with mpirun"
gpu_log=$(run_of gpu-bind "$j_gpu")/job.log
if grep -q 'local rank 0, CUDA_VISIBLE_DEVICES=0$' "$gpu_log" && grep -q 'local rank 1, CUDA_VISIBLE_DEVICES=1$' "$gpu_log"; then
  say "gpu-bind: rank 0 got GPU 0 and rank 1 GPU 1"
else
  fail "gpu-bind: no one-GPU-per-rank binding in $gpu_log"
fi

# --- the local launcher --------------------------------------------------------------------------------
same_output run-local "$RUNS_DIR/local/output.h5"
same_metrics run-local "$RUNS_DIR/local/metrics.json"

# --- failing jobs --------------------------------------------------------------------------------------
expect_state "$j_missing" missing-input FAILED 1:0
if grep -q "error: input file not found: $tmp/missing.h5" "$(run_of missing-input "$j_missing")/job.log" \
   && grep -q "error: input file not found" "slurm-$j_missing.out"; then
  say "missing-input: the error is in job.log and slurm-$j_missing.out"
else
  fail "missing-input: no 'input file not found' error in the job's logs"
fi
state=$(job_field "$j_badopt" JobState)
if [[ "$state" == FAILED && "$(job_field "$j_badopt" ExitCode)" != 0:0 ]]; then
  say "bad-option (job $j_badopt): FAILED, exit code $(job_field "$j_badopt" ExitCode)"
else
  fail "bad-option (job $j_badopt): JobState=$state, expected FAILED"
fi
grep -qi 'planes' "$(run_of bad-option "$j_badopt")/job.log" \
  || fail "bad-option: racesp's error about --planes is not in job.log"
for id in "$j_missing" "$j_badopt"; do
  grep -q "JobId=$id .*JobState=FAILED" "$cluster/log/jobcomp.txt" \
    || fail "job $id is not FAILED in the job completion log"
done

# --- the sweep -------------------------------------------------------------------------------------------
sweep=$(run_of sweep "$j_sweep")
for task in 0 1 2 3; do
  expect_state "${j_sweep}_$task" "sweep task $task" COMPLETED 0:0
done
for combo in r1-t256 r1-t512 r2-t256 r2-t512; do
  f=$sweep/$combo.jsonl
  if ! lines=$(json "$f" lines 2>&1); then
    fail "sweep $combo: $f is not JSON lines: $lines"
    continue
  fi
  r=${combo#r}; r=${r%%-*}; t=${combo#*-t}
  grep -qx "sweep_ranks=$r" <<<"$lines" && grep -qx "sweep_tokens=$t" <<<"$lines" \
    || fail "sweep $combo: the JSON lines lack sweep_ranks=$r sweep_tokens=$t"
  # racesp's own fields: the ranks it ran on and the tokens it timed.
  grep -qx "machine.ranks=$r" <<<"$lines" && grep -qx "tokens=$t" <<<"$lines" \
    || fail "sweep $combo: racesp bench did not run $t tokens on $r ranks: ${lines//$'\n'/ }"
  say "sweep $combo: $(grep -c '^--- line' <<<"$lines") JSON line(s)"
done

weak=$(run_of sweep-weak "$j_weak")
expect_state "$j_weak" "sweep-weak (all combinations, mpirun)" COMPLETED 0:0
for r in 1 2; do
  if lines=$(json "$weak/r$r-t128.jsonl" lines 2>&1) && grep -qx "machine.ranks=$r" <<<"$lines" \
     && grep -qx "tokens=$((128 * r))" <<<"$lines" && grep -qx "launcher=mpirun" <<<"$lines"; then
    say "sweep-weak r$r: $((128 * r)) tokens on $r ranks under mpirun"
  else
    fail "sweep-weak r$r: expected $((128 * r)) tokens on $r ranks in $weak/r$r-t128.jsonl: ${lines//$'\n'/ }"
  fi
done

say "done: $failures failure(s)"
((failures == 0))
