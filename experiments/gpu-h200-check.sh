#!/usr/bin/env bash
# One device call that checks a kernel version on one H200 (v7 on; gpu-notes.md), run from the
# checkout's root after `source .devdeps/setup.sh`. In order, each part limited by its own
# timeout: build the CUDA tests, the bench and racesp; the 8M bench (bf16, causal and
# non-causal) as the tree stands, then again with the same binary under COMPARE_ENV (variables,
# e.g. RACESP_CUDA_SPLIT_DQ=0) and COMPARE_ARGS (bench options, e.g. --recompute-key-totals): the
# previous version's step, for an A/B on one machine; every gpu-labelled test (the multi-GPU ones
# skip on one GPU). Files under $OUT: gpu.txt build.log bench.jsonl bench-compare.jsonl ctest.log.
#   v7: COMPARE_ARGS=--recompute-key-totals experiments/gpu-h200-check.sh
#   v8: COMPARE_ENV=RACESP_CUDA_SPLIT_DQ=0 experiments/gpu-h200-check.sh
set -uo pipefail
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv >"$OUT/gpu.txt" 2>&1
B=${BUILD:-/tmp/b-check}
{ timeout 60 cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a &&
  timeout 300 cmake --build "$B" -j "$(nproc)" --target racesp racesp_cuda_bench racesp_cuda_tests \
    racesp_cuda_long_test racesp_cuda_mpi_tests racesp_cuda_model_tests racesp_cuda_train_tests racesp_cuda_bench_tests; } \
  >"$OUT/build.log" 2>&1 ||
  { echo "BUILD FAILED at ${SECONDS}s"; grep -E "error" "$OUT/build.log" | head -30; tail -5 "$OUT/build.log"; exit 1; }
echo "build: ${SECONDS}s"
bench=$B/src/cuda/racesp_cuda_bench
eight=$((8 << 20))
timeout 60 "$bench" --tokens $eight --mode both --dtype bf16 --runs 5 --warmup 1 --out "$OUT/bench.jsonl" >/dev/null
echo "bench rc=$? ${SECONDS}s"
# shellcheck disable=SC2086 # COMPARE_ENV and COMPARE_ARGS are lists of words
timeout 60 env ${COMPARE_ENV:-} "$bench" --tokens $eight --mode both --dtype bf16 --runs 5 --warmup 1 ${COMPARE_ARGS:-} \
  --out "$OUT/bench-compare.jsonl" >/dev/null
echo "bench with ${COMPARE_ENV:-} ${COMPARE_ARGS:-} rc=$? ${SECONDS}s"
timeout 330 ctest --test-dir "$B" -L gpu -j 4 --output-on-failure --timeout 300 >"$OUT/ctest.log" 2>&1
echo "ctest rc=$? ${SECONDS}s"
grep -E "tests passed|tests failed|\(Failed\)|\(Timeout\)|Not Run|Total Test" "$OUT/ctest.log" | head -20
for f in bench bench-compare; do
  python3 -c "import json,sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    print(sys.argv[2], 'causal' if d['causal'] else 'non-causal', round(d['median_s'], 4), 's',
          round(d['tokens_per_s'] / 1e6, 2), 'M tokens/s, forward', round(d['forward_s'], 4), 's')" "$OUT/$f.jsonl" "$f"
done
