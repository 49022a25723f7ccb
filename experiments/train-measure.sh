#!/usr/bin/env bash
# racesp train on RANKS GPUs (DEVICE=cuda, the default) or RANKS CPU ranks (DEVICE=cpu) of one
# host: tokens/s of a 4-layer, width-512, 8-head model (L = 4, P = 4; bf16 on GPUs) at 1M tokens
# per sequence, and the longest sequence that trains (a couple of steps each, longer until the
# first one that does not fit; on GPUs then the same with --recompute). With several ranks, one
# sequence is sharded over all of them (sp = RANKS); the 1M speed is also taken data-parallel
# (sp 1, one sequence per rank; GPUs only: on CPUs both share the same cores).
#
#   experiments/train-measure.sh RANKS [speed|longest|all]
#
# Needs a built racesp (RACESP_BIN, default build-gpu/src/cli/racesp) and, for RANKS > 1, mpirun.
# CPU ranks get OMP_NUM_THREADS = cores / RANKS unless it is set; SPEED_STEPS (default 6) steps
# time the 1M run, LONGEST_STEPS (default 2) each run of the longest search.
# Writes into OUT (default experiments/results/train-gpu, or train-cpu):
# train-r<RANKS>.log (every run's output) and train-r<RANKS>.jsonl (one JSON line per run: what
# ran, whether it trained, tokens/s per step and their mean over the steps after the first, the
# last step's time and its share in the attention layers, losses, GPU buffers held or, on CPUs,
# the host's peak memory in use during the run, the summary line).
# The token file (word-like text, about 64 MB) and the runs' metrics files go to WORK (default
# /tmp/racesp-train-measure).
# RUN_TIMEOUT bounds each run (default 150 s); LENGTHS lists the sequence lengths to try.
set -uo pipefail

ranks=${1:?usage: $0 RANKS [speed|longest|all]}
what=${2:-all}
device=${DEVICE:-cuda}
bin=${RACESP_BIN:-build-gpu/src/cli/racesp}
out=${OUT:-experiments/results/train-$([[ $device == cuda ]] && echo gpu || echo cpu)}
work=${WORK:-/tmp/racesp-train-measure}
run_timeout=${RUN_TIMEOUT:-150}
lengths=${LENGTHS:-"2M 2.25M 2.5M 3M 4M 4.5M 5M 6M 8M 12M 16M"}
speed_steps=${SPEED_STEPS:-6}
longest_steps=${LONGEST_STEPS:-2}
threads=4
[[ $device == cpu ]] && threads=$(( $(nproc) / ranks > 0 ? $(nproc) / ranks : 1 ))
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads}
[[ -x $bin ]] || { echo "$0: racesp not found at $bin (set RACESP_BIN)" >&2; exit 1; }
mkdir -p "$out" "$work"
log=$out/train-r$ranks.log
results=$out/train-r$ranks.jsonl

if [[ ! -f $work/tokens.h5 ]]; then
  python3 - "$work/text.txt" <<'EOF'
import random, sys
words = ("race attention shard rank token state bucket plane hash sequence model train the of and a "
         "long context linear kernel angular query key value gradient step").split()
rng = random.Random(1)
block = "".join(rng.choice(words) + (".\n" if rng.random() < 0.12 else " ") for _ in range(1 << 20))
with open(sys.argv[1], "w") as f:
    for i in range(10):  # ~64 MB; each copy's words shuffled differently
        f.write(" ".join(rng.sample(block.split(" "), k=len(block.split(" ")))))
EOF
  "$bin" prep --input "$work/text.txt" --output "$work/tokens.h5" --val-fraction 0 >>"$log" 2>&1 \
    || { echo "$0: racesp prep failed (see $log)" >&2; exit 1; }
fi

model=(--layers 4 --width 512 --heads 8 --tables 4 --planes 4 --lr 1e-3 --warmup 2 --log-every 1)
launcher=("$bin")
((ranks > 1)) && launcher=(mpirun -np "$ranks" --bind-to none -x OMP_NUM_THREADS "$bin")

# least_available FILE: every half second, the least MemAvailable (kB) seen so far into FILE;
# run in the background for the length of a CPU run.
least_available() {
  local least now
  least=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
  while echo "$least" >"$1" && sleep 0.5; do
    now=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
    ((now < least)) && least=$now
  done
}

# run NAME SP BATCH SEQ_LEN STEPS [racesp options]: one training run, one JSON line in $results.
run() {
  local name=$1 sp=$2 batch=$3 seq=$4 steps=$5
  shift 5
  local metrics=$work/$name.jsonl
  rm -f "$metrics"
  echo "=== $name: $ranks $device rank(s), sp $sp, batch $batch, --seq-len $seq, $steps steps $*" | tee -a "$log"
  local available_before sampler=
  available_before=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
  if [[ $device == cpu ]]; then least_available "$work/least.txt" & sampler=$!; fi
  timeout "$run_timeout" "${launcher[@]}" train --device "$device" --data "$work/tokens.h5" "${model[@]}" \
    --sp-size "$sp" --batch "$batch" --seq-len "$seq" --steps "$steps" --metrics "$metrics" "$@" \
    >"$work/last.txt" 2>&1
  local rc=$? host_peak=
  if [[ -n $sampler ]]; then
    kill "$sampler"; wait "$sampler" 2>/dev/null
    host_peak=$(( (available_before - $(cat "$work/least.txt")) * 1024 ))
  fi
  cat "$work/last.txt" >>"$log"
  python3 - "$name" "$device" "$ranks" "$sp" "$batch" "$seq" "$rc" "$metrics" "$work/last.txt" "$host_peak" "$*" \
    >>"$results" <<'EOF'
import json, re, sys
name, device, ranks, sp, batch, seq, rc, metrics, output, host_peak, extra = sys.argv[1:]
text = open(output, errors="replace").read()
steps = []
try:
    steps = [json.loads(l) for l in open(metrics)]
except OSError:
    pass
timed = [s["tokens_per_s"] for s in steps[1:]] or [s["tokens_per_s"] for s in steps]
mem = re.search(r"holds ([0-9.]+ ?[KMGT]?i?B) of GPU buffers", text)
summary = [l for l in text.splitlines() if l.startswith("racesp: train: steps")]
errors = [l for l in text.splitlines() if "error" in l]
print(json.dumps({"run": name, "device": device, "ranks": int(ranks), "sp": int(sp), "batch": int(batch), "seq_len": seq,
                  "options": extra, "exit": int(rc), "trained": int(rc) == 0 and len(steps) > 0,
                  "steps": len(steps), "tokens_per_s": sum(timed) / len(timed) if timed else None,
                  "step_tokens_per_s": [round(s["tokens_per_s"]) for s in steps],
                  "step_s": steps[-1]["step_s"] if steps else None,
                  "attention_s": steps[-1].get("attention_s") if steps else None,
                  "losses": [round(s["loss"], 4) for s in steps],
                  "gpu_buffers": mem.group(1) if mem else None,
                  "host_peak_bytes": int(host_peak) if host_peak else None,
                  "summary": summary[-1] if summary else None, "error": errors[-1][:400] if errors else None}))
EOF
  tail -1 "$results"
  return "$rc"
}

if [[ $what == speed || $what == all ]]; then
  run "speed-1M-sp$ranks" "$ranks" 1 1M "$speed_steps"
  ((ranks > 1)) && [[ $device == cuda ]] && run "speed-1M-dp$ranks" 1 "$ranks" 1M "$speed_steps"
fi
if [[ $what == longest || $what == all ]]; then
  # Without recomputation up to the first length that fails; with it (GPUs), from that length on.
  failed=
  for seq in $lengths; do
    run "longest-store-$seq" "$ranks" 1 "$seq" "$longest_steps" || { failed=$seq; break; }
  done
  if [[ -n $failed && $device == cuda ]]; then
    from=0
    for seq in $lengths; do
      [[ $seq == "$failed" ]] && from=1
      ((from)) || continue
      run "longest-recompute-$seq" "$ranks" 1 "$seq" "$longest_steps" --recompute || break
    done
  fi
fi
echo "results: $results"
