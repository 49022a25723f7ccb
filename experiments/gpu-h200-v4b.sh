#!/usr/bin/env bash
# Second v4 device call: build this tree and the v3 tests (baseline tree with the same new test
# cases), compare the D=30 fp32 cases (element-wise row path) between v3 and v4, run v4's fp32
# causal cases with RACESP_CUDA_VEC=0, the whole gpu-labelled suite, and the 8M bench (kernel and
# bucket normalisation). Few files under $OUT (at most 8 come back): diag.txt, ctest.log, bench.jsonl.
# Usage (from this tree's root, .devdeps sourced): experiments/gpu-h200-v4b.sh baseline-tree
set -uo pipefail
base=$1
gen="-G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a"
t0=$(date +%s)
( cmake -S . -B /tmp/b4 $gen >/tmp/cfg4.log 2>&1 &&
  cmake --build /tmp/b4 -j 12 --target racesp_cuda_bench racesp_cuda_tests racesp_cuda_long_test racesp_cuda_mpi_tests \
    >/tmp/build4.log 2>&1 ) &
p4=$!
( cmake -S "$base" -B /tmp/b3 $gen >/tmp/cfg3.log 2>&1 && cmake --build /tmp/b3 -j 6 --target racesp_cuda_tests >/tmp/build3.log 2>&1 ) &
p3=$!
wait $p4 || { echo "BUILD FAILED"; grep -E "error" /tmp/build4.log | head -30; tail -20 /tmp/cfg4.log; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
T4=/tmp/b4/tests/cuda/racesp_cuda_tests
{
  echo "== v4, D30/D36 and fp32 causal kernel cases, twice"
  timeout 60 $T4 --gtest_filter='*D30*:*D36*:*causal_kernel_fp32*' --gtest_repeat=2 2>&1 | grep -E ": o |FAILED|Failure|Expected|Which is|rel_error|dbeta" | head -80
  echo "== v4 RACESP_CUDA_VEC=0, fp32 causal kernel and CudaVsCpu/CudaShards"
  RACESP_CUDA_VEC=0 timeout 60 $T4 --gtest_filter='*causal_kernel_fp32*:CudaVsCpu.*:CudaShards.*' 2>&1 | grep -E ": o |FAILED|PASSED|Failure" | head -40
} >"$OUT/diag.txt" 2>&1
echo "diag v4: $(( $(date +%s) - t0 )) s"
timeout 200 ctest --test-dir /tmp/b4 -L gpu -j 8 --output-on-failure --timeout 180 >"$OUT/ctest.log" 2>&1
echo "ctest rc=$? $(( $(date +%s) - t0 )) s"
{
  echo "== v3 (baseline tree), same cases"
  wait $p3 && timeout 60 /tmp/b3/tests/cuda/racesp_cuda_tests --gtest_filter='*D30*:*D36*:*causal_kernel_fp32*' 2>&1 |
    grep -E ": o |FAILED|Failure|Expected|Which is" | head -60 || { echo "v3 build failed"; grep error /tmp/build3.log | head; }
} >>"$OUT/diag.txt" 2>&1
echo "diag v3: $(( $(date +%s) - t0 )) s"
bench=/tmp/b4/src/cuda/racesp_cuda_bench
eight=$((8 << 20))
timeout 60 $bench --tokens $eight --mode both --dtype bf16 --runs 5 --warmup 1 --out "$OUT/bench.jsonl" >/dev/null 2>&1
echo "bench rc=$? $(( $(date +%s) - t0 )) s"
timeout 60 $bench --tokens $eight --mode both --dtype bf16 --normalization bucket --runs 3 --warmup 1 --out "$OUT/bench.jsonl" >/dev/null 2>&1
echo "bench bucket rc=$? $(( $(date +%s) - t0 )) s"

echo "== tests"
grep -E "tests passed|tests failed|\(Failed\)|Not Run|Timeout|\*\*\*Exception" "$OUT/ctest.log" | head -30
grep -E "16M causal" "$OUT/ctest.log" | head -2
echo "== diag"
cat "$OUT/diag.txt" | cut -c1-200 | head -120
echo "== bench"
python3 -c "
import json
for l in open('$OUT/bench.jsonl'):
    j=json.loads(l); print(j['normalization'], 'causal' if j['causal'] else 'full', round(j['median_s'],4), round(j['tokens_per_s']/1e6,2), 'M/s fwd', round(j['forward_s'],4))"
cat "$OUT/bench.jsonl"
