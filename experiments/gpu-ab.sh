#!/usr/bin/env bash
# One device call that compares kernel versions on one H200 (gpu-notes.md, v21 on): builds the
# bench of each older tree (OLD: folders named build-<version>, each made by `git archive <rev>
# CMakeLists.txt CMakePresets.json src include tests | tar -x -C build-<version>` and carried with
# the call), then runs the check of the current tree (gpu-h200-check.sh: build, bench, every
# gpu-labelled test), then all the benches in turn, ROUNDS times, at 8M tokens, bf16, both modes.
# Run from the checkout's root after `source .devdeps/setup.sh`. Files under $OUT: the check's,
# old-build-<version>.log, ab.txt (one line per run: version, mode, median_s, M tokens/s, forward_s).
#   OLD="build-v19 build-v21" NEW_NAME=v22 experiments/gpu-ab.sh
set -uo pipefail
: "${OLD:?OLD: the folders of the older trees}"
export NCCL_NVLS_ENABLE=0
benches=()
# The older trees build side by side (each is mostly one long nvcc compile).
for tree in $OLD; do
  name=${tree#build-}
  { timeout 60 cmake -S "$tree" -B "/tmp/b-$name" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a &&
    timeout 300 cmake --build "/tmp/b-$name" -j "$(nproc)" --target racesp_cuda_bench; } >"$OUT/old-build-$name.log" 2>&1 &
done
wait
for tree in $OLD; do
  name=${tree#build-}
  [ -x "/tmp/b-$name/src/cuda/racesp_cuda_bench" ] ||
    { echo "BUILD OF $tree FAILED"; tail -5 "$OUT/old-build-$name.log"; exit 1; }
  benches+=("$name=/tmp/b-$name/src/cuda/racesp_cuda_bench")
done
echo "$OLD built: ${SECONDS}s"
BUILD=${BUILD:-/tmp/b-check}
export BUILD
bash "$(dirname "$0")/gpu-h200-check.sh" || exit 1
benches+=("${NEW_NAME:-new}=$BUILD/src/cuda/racesp_cuda_bench")
for round in $(seq "${ROUNDS:-2}"); do
  for entry in "${benches[@]}"; do
    name=${entry%%=*} bench=${entry#*=}
    timeout 60 "$bench" --tokens $((8 << 20)) --mode both --dtype bf16 --runs 5 --warmup 1 \
      --out "/tmp/ab-$name-$round.jsonl" >/dev/null || echo "$name bench failed (round $round)"
    python3 -c "import json,sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    print(sys.argv[2], 'causal' if d['causal'] else 'non-causal', 'median_s', round(d['median_s'], 4),
          'Mtok/s', round(d['tokens_per_s'] / 1e6, 2), 'forward_s', round(d['forward_s'], 4))" \
      "/tmp/ab-$name-$round.jsonl" "$name" | tee -a "$OUT/ab.txt"
  done
done
echo "done: ${SECONDS}s"
