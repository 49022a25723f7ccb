#!/usr/bin/env bash
# One device call for v7 (gpu-notes.md: the backward reuses the forward's key totals), run from
# the checkout's root after `source .devdeps/setup.sh`, on one H200. In order, each part limited by
# its own timeout: build the CUDA tests, the bench and racesp; the 8M bench (bf16, causal and
# non-causal) with the key totals reused, then recomputed (v6's step) with the same binary; every
# gpu-labelled test (the multi-GPU ones skip on one GPU). Files under $OUT: gpu.txt build.log
# bench.jsonl bench-recompute.jsonl ctest.log.
set -uo pipefail
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv >"$OUT/gpu.txt" 2>&1
B=${BUILD:-/tmp/b7}
{ timeout 60 cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 &&
  timeout 300 cmake --build "$B" -j "$(nproc)" --target racesp racesp_cuda_bench racesp_cuda_tests \
    racesp_cuda_long_test racesp_cuda_mpi_tests racesp_cuda_model_tests racesp_cuda_train_tests; } \
  >"$OUT/build.log" 2>&1 ||
  { echo "BUILD FAILED at ${SECONDS}s"; grep -E "error" "$OUT/build.log" | head -30; tail -5 "$OUT/build.log"; exit 1; }
echo "build: ${SECONDS}s"
bench=$B/src/cuda/racesp_cuda_bench
eight=$((8 << 20))
timeout 60 "$bench" --tokens $eight --mode both --dtype bf16 --runs 5 --warmup 1 --out "$OUT/bench.jsonl" >/dev/null
echo "bench (key totals reused) rc=$? ${SECONDS}s"
timeout 60 "$bench" --tokens $eight --mode both --dtype bf16 --runs 5 --warmup 1 --recompute-key-totals \
  --out "$OUT/bench-recompute.jsonl" >/dev/null
echo "bench (recomputed) rc=$? ${SECONDS}s"
timeout 330 ctest --test-dir "$B" -L gpu -j 4 --output-on-failure --timeout 300 >"$OUT/ctest.log" 2>&1
echo "ctest rc=$? ${SECONDS}s"
grep -E "tests passed|tests failed|\(Failed\)|\(Timeout\)|Not Run|Total Test" "$OUT/ctest.log" | head -20
for f in bench bench-recompute; do
  python3 -c "import json,sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    print(sys.argv[2], 'causal' if d['causal'] else 'non-causal', round(d['median_s'], 4), 's',
          round(d['tokens_per_s'] / 1e6, 2), 'M tokens/s, forward', round(d['forward_s'], 4), 's')" "$OUT/$f.jsonl" "$f"
done
