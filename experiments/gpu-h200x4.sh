#!/usr/bin/env bash
# One device call on a 4-GPU H200 host: build, the 2- and 4-rank GPU equality tests (NCCL), then
# weak scaling 1 -> 2 -> 4 GPUs at 8M tokens per GPU (bf16, B=1, H=4, D=128, P=4, L=4, causal and
# non-causal) and 64M causal tokens on 4 GPUs. JSON lines to $OUT/scaling.jsonl.
set -uo pipefail
source .devdeps/setup.sh
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
nvidia-smi topo -m >"$OUT/topo.txt" 2>&1
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a >"$OUT/cfg.log" 2>&1 || { tail -30 "$OUT/cfg.log"; exit 1; }
cmake --build build-gpu -j 32 --target racesp_cuda_mpi_tests racesp_cuda_bench >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -30; exit 1; }
ctest --test-dir build-gpu -R cuda_mpi --output-on-failure --timeout 300 >"$OUT/ctest.log" 2>&1
grep -E "tests passed|tests failed|Passed|Failed|FAILED" "$OUT/ctest.log" | head -20
bench=build-gpu/src/cuda/racesp_cuda_bench
for n in 1 2 4; do
  mpirun -np $n --bind-to none -x NCCL_NVLS_ENABLE $bench --tokens-per-rank $((8 << 20)) --mode both --dtype bf16 \
    --runs 5 --warmup 1 --out "$OUT/scaling.jsonl" 2>&1 | tail -2
done
mpirun -np 4 --bind-to none -x NCCL_NVLS_ENABLE $bench --tokens-per-rank $((16 << 20)) --mode causal --dtype bf16 \
  --runs 5 --warmup 1 --out "$OUT/scaling.jsonl" 2>&1 | tail -1
