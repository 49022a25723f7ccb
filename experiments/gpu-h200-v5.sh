#!/usr/bin/env bash
# One device call for kernel version v5 (gpu-notes.md), run from this tree's root after
# `source .devdeps/setup.sh`. In order, each part limited by its own timeout and by a whole-call
# DEADLINE (seconds, default 315): build the CUDA tests, bench and GPU model tests; the 8M bench
# (bf16, causal and non-causal) with the v5 kernels; the gpu-labelled tests except the
# end-to-end train tests (their racesp build runs meanwhile in the background); the same bench
# with RACESP_CUDA_FIXED=0 (the run-time-size kernels, v4's code, same machine); SASS instruction
# counts; the train tests and Nsight Compute warp states if time is left. Files under $OUT
# (at most 8 come back): gpu.txt build.log bench.jsonl bench-fixed0.jsonl ctest.log
# ctest-train.log sass.txt ncu.txt; a summary is printed last.
set -uo pipefail
deadline=${DEADLINE:-315}
left() {  # left LIMIT [KEEP]: seconds a part may take
  local t=$((deadline - SECONDS - ${2:-0}))
  ((t > $1)) && t=$1
  ((t < 1)) && t=1
  echo "$t"
}
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv >"$OUT/gpu.txt" 2>&1
B=/tmp/b5
gen="-G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a"
{ timeout 60 cmake -S . -B $B $gen &&
  timeout "$(left 200 110)" cmake --build $B -j 16 --target racesp_cuda_bench racesp_cuda_tests racesp_cuda_long_test \
    racesp_cuda_mpi_tests racesp_cuda_model_tests; } >"$OUT/build.log" 2>&1 ||
  { echo "BUILD FAILED at ${SECONDS}s"; grep -E "error|Error" "$OUT/build.log" | head -30; tail -5 "$OUT/build.log"; exit 1; }
echo "build: ${SECONDS}s"
# The end-to-end train tests need the racesp command: built in the background meanwhile.
( timeout "$(left 150 60)" cmake --build $B -j 8 --target racesp_cuda_train_tests >>"$OUT/build.log" 2>&1 ) &
ptrain=$!
bench=$B/src/cuda/racesp_cuda_bench
eight=$((8 << 20))
timeout "$(left 70 80)" $bench --tokens $eight --mode both --dtype bf16 --runs 5 --warmup 1 --out "$OUT/bench.jsonl" \
  >/tmp/bench.log 2>&1
echo "bench rc=$? ${SECONDS}s"
timeout "$(left 130 35)" ctest --test-dir $B -L gpu -E "gpu_train|NOT_BUILT" -j 8 --output-on-failure --timeout 120 \
  >"$OUT/ctest.log" 2>&1
echo "ctest rc=$? ${SECONDS}s"
RACESP_CUDA_FIXED=0 timeout "$(left 40)" $bench --tokens $eight --mode both --dtype bf16 --runs 3 --warmup 1 \
  --out "$OUT/bench-fixed0.jsonl" >/tmp/bench0.log 2>&1
echo "bench FIXED=0 rc=$? ${SECONDS}s"
cuobjdump -sass $B/src/cuda/CMakeFiles/racesp_cuda.dir/cuda_attention.cu.o 2>/dev/null | awk '
  /Function :/ { f = $3; sub(/.*segment_kernel/, "", f) }
  /^ *\/\*[0-9a-f]+\*\/ / && f != "" { n[f]++; op = $2; sub(/;$/, "", op); if (op ~ /^@/) op = $3
    split(op, p, "."); o = p[1]; if (o ~ /^(HMMA|LDS|STS|LDL|STL|F2F|FRND|BAR|I2F|F2I|MUFU|LDG|STG|FFMA|FMUL|FADD|IMAD|LEA|IADD3|SHF|LOP3|ISETP|BRA)$/) c[f, o]++ }
  END { for (f in n) { printf "%s total=%d", f, n[f]; for (k in c) { split(k, q, SUBSEP); if (q[1] == f) printf " %s=%d", q[2], c[k] }; printf "\n" } }' |
  grep -E "bfloat16" | sort >"$OUT/sass.txt"
wait $ptrain && timeout "$(left 120)" ctest --test-dir $B -R gpu_train -j 4 --output-on-failure --timeout 110 \
  >"$OUT/ctest-train.log" 2>&1
echo "train tests rc=$? ${SECONDS}s"
if (($(left 60) >= 45)); then
  timeout "$(left 60)" ncu --clock-control none --section WarpStateStats --section SpeedOfLight --page raw \
    -k regex:segment_kernel -c 5 $bench --tokens $((1 << 20)) --mode full --runs 1 --warmup 0 >"$OUT/ncu.txt" 2>&1
  echo "ncu rc=$? ${SECONDS}s"
fi

echo "== tests"
for f in ctest ctest-train; do
  grep -E "tests passed|tests failed|\(Failed\)|Not Run|Timeout|\*\*\*Exception" "$OUT/$f.log" 2>/dev/null | head -20
done
grep -E "16M causal" "$OUT/ctest.log" | head -2
grep -E "fixed vs run-time" "$OUT/ctest.log" | grep -oE "D[0-9]+_P.*" | head -16
echo "== sass"; cut -c1-400 "$OUT/sass.txt"
echo "== bench (median_s, M tokens/s, forward_s)"
for f in bench bench-fixed0; do
  [[ -f $OUT/$f.jsonl ]] && python3 -c "
import json
for l in open('$OUT/$f.jsonl'):
    j = json.loads(l); print('$f', 'causal' if j['causal'] else 'full', round(j['median_s'], 4), round(j['tokens_per_s'] / 1e6, 2), round(j['forward_s'], 4))"
done
cat "$OUT/bench.jsonl"
