#!/usr/bin/env bash
# One device call that records where the attention kernels' time goes, instruction by instruction
# (gpu-notes.md, v41 and v42 were found this way), run from the checkout's root after
# `source .devdeps/setup.sh`: builds the bench, runs Nsight Compute's SourceCounters section on one
# forward + backward (each SASS instruction's executions and stall samples, one launch of each
# kernel that KERNELS matches), exports them as CSV and summarises them with source_counters.py.
#   KERNELS (regex, default the causal kernels)  TOKENS (default 1M)  MODE (causal|full, default causal)
# Files under $OUT: build.log ncu.log source.csv.gz source-counters.txt.
set -uo pipefail
export NCCL_NVLS_ENABLE=0
B=${BUILD:-/tmp/b-source}
kernels=${KERNELS:-causal_sweep|causal_totals|causal_backward}
{ timeout 60 cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a &&
  timeout 300 cmake --build "$B" -j "$(nproc)" --target racesp_cuda_bench; } >"$OUT/build.log" 2>&1 ||
  { echo "BUILD FAILED at ${SECONDS}s"; grep -E "error" "$OUT/build.log" | head -30; exit 1; }
echo "build: ${SECONDS}s"
launches=$(( $(tr -cd '|' <<<"$kernels" | wc -c) + 1 ))
timeout 240 ncu --clock-control none --section SourceCounters -k regex:"$kernels" -c "$launches" -o /tmp/source-counters -f \
  "$B/src/cuda/racesp_cuda_bench" --tokens "${TOKENS:-$((1 << 20))}" --mode "${MODE:-causal}" --dtype bf16 \
  --runs 1 --warmup 0 >"$OUT/ncu.log" 2>&1
echo "ncu rc=$? ${SECONDS}s"
ncu -i /tmp/source-counters.ncu-rep --page source --print-source sass --csv 2>/dev/null | gzip >"$OUT/source.csv.gz"
python3 "$(dirname "$0")/source_counters.py" "$OUT/source.csv.gz" >"$OUT/source-counters.txt"
echo "summary rc=$? ${SECONDS}s"
