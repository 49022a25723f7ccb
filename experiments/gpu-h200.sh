#!/usr/bin/env bash
# One device call on an H200 host: build the CUDA targets, run the gpu-labelled tests, then the
# benchmark (B=1, H=4, D=128, P=4, L=4, bf16, 8M tokens, causal and non-causal) and the longest
# causal sequence. Logs and JSON lines go to $OUT. Usage: experiments/gpu-h200.sh [tests|bench|all]
set -uo pipefail
what=${1:-all}
source .devdeps/setup.sh
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a >"$OUT/cfg.log" 2>&1 || { tail -30 "$OUT/cfg.log"; exit 1; }
cmake --build build-gpu -j 16 --target racesp_cuda_tests racesp_cuda_long_test racesp_cuda_mpi_tests racesp_cuda_bench \
  >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -30; exit 1; }
bench=build-gpu/src/cuda/racesp_cuda_bench
# Tensor-core instructions in the segment kernels (HMMA: mma.sync / WMMA).
cuobjdump -sass build-gpu/src/cuda/CMakeFiles/racesp_cuda.dir/cuda_attention.cu.o 2>/dev/null | grep -oE "HMMA[.A-Z0-9]*|FFMA|LDS[.0-9A-Z]*" | sort | uniq -c | tee "$OUT/sass.txt"
if [[ $what == tests || $what == all ]]; then
  ctest --test-dir build-gpu -L gpu -j 8 --output-on-failure --timeout 600 >"$OUT/ctest.log" 2>&1
  grep -E "tests passed|tests failed|\(Failed\)|\*\*\*" "$OUT/ctest.log" | head -40
  build-gpu/tests/cuda/racesp_cuda_long_test 2>&1 | grep -E "16M|OK|FAILED" | head
fi
if [[ $what == bench || $what == all ]]; then
  $bench --tokens $((8 << 20)) --mode both --dtype bf16 --runs 5 --warmup 1 --out "$OUT/bench.jsonl" 2>&1 | tail -4
  $bench --max-tokens --mode causal --dtype bf16 --out "$OUT/bench.jsonl" 2>&1 | tail -2
fi
