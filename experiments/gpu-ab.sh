#!/usr/bin/env bash
# One device call that compares two kernel versions on one H200 (gpu-notes.md, v21 on): builds the
# bench of an older tree (OLD: a folder made by `git archive <rev> CMakeLists.txt CMakePresets.json
# src include tests | tar -x -C <folder>`, carried with the call), then runs the check of the
# current tree (gpu-h200-check.sh: build, bench, every gpu-labelled test), then the two benches
# alternating ROUNDS times at 8M tokens, bf16, both modes. Run from the checkout's root after
# `source .devdeps/setup.sh`. Files under $OUT: the check's, old-build.log, ab.txt (one line per
# run: version, mode, median_s, M tokens/s, forward_s).
#   OLD=build-v19 NEW_NAME=v21 OLD_NAME=v19 experiments/gpu-ab.sh
set -uo pipefail
: "${OLD:?OLD: the folder of the older tree}"
export NCCL_NVLS_ENABLE=0
old_build=/tmp/b-old
{ timeout 60 cmake -S "$OLD" -B "$old_build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 &&
  timeout 240 cmake --build "$old_build" -j "$(nproc)" --target racesp_cuda_bench; } >"$OUT/old-build.log" 2>&1 ||
  { echo "OLD BUILD FAILED"; tail -5 "$OUT/old-build.log"; exit 1; }
echo "old build: ${SECONDS}s"
BUILD=${BUILD:-/tmp/b-check}
export BUILD
bash "$(dirname "$0")/gpu-h200-check.sh" || exit 1
for round in $(seq "${ROUNDS:-2}"); do
  for which in old new; do
    if [ "$which" = old ]; then bench=$old_build/src/cuda/racesp_cuda_bench name=${OLD_NAME:-old}
    else bench=$BUILD/src/cuda/racesp_cuda_bench name=${NEW_NAME:-new}; fi
    timeout 60 "$bench" --tokens $((8 << 20)) --mode both --dtype bf16 --runs 5 --warmup 1 \
      --out "/tmp/ab-$which-$round.jsonl" >/dev/null || echo "$name bench failed (round $round)"
    python3 -c "import json,sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    print(sys.argv[2], 'causal' if d['causal'] else 'non-causal', 'median_s', round(d['median_s'], 4),
          'Mtok/s', round(d['tokens_per_s'] / 1e6, 2), 'forward_s', round(d['forward_s'], 4))" \
      "/tmp/ab-$which-$round.jsonl" "$name" | tee -a "$OUT/ab.txt"
  done
done
echo "done: ${SECONDS}s"
