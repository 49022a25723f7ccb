#!/usr/bin/env bash
# One device call for a kernel version (v4): build this tree and, when given, a baseline tree
# beside it; the 8M bench (bf16, causal and non-causal) first, then the gpu-labelled tests, the
# baseline bench, this tree with RACESP_CUDA_VEC=0 (no row prefetch), Nsight Compute warp states
# of one non-causal forward + backward at 1M tokens, and the tensor-core/load instruction counts.
# Every part has its own time limit; logs and JSON lines go to $OUT, a summary is printed last.
# Usage (from this tree's root, .devdeps sourced): experiments/gpu-h200-v4.sh [baseline-tree]
set -uo pipefail
base=${1:-}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv >"$OUT/gpu.txt" 2>&1
gen="-G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a"
t0=$(date +%s)
( cmake -S . -B /tmp/b4 $gen >"$OUT/cfg.log" 2>&1 &&
  cmake --build /tmp/b4 -j 12 --target racesp_cuda_bench racesp_cuda_tests racesp_cuda_long_test racesp_cuda_mpi_tests \
    >"$OUT/build.log" 2>&1 ) &
p4=$!
if [[ -n $base ]]; then
  ( cmake -S "$base" -B /tmp/b3 $gen >"$OUT/cfg-base.log" 2>&1 &&
    cmake --build /tmp/b3 -j 4 --target racesp_cuda_bench >"$OUT/build-base.log" 2>&1 ) &
  p3=$!
fi
wait $p4 || { echo "BUILD FAILED"; grep -E "error" "$OUT/build.log" | head -30; tail -20 "$OUT/cfg.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
bench=/tmp/b4/src/cuda/racesp_cuda_bench
eight=$((8 << 20))
timeout 90 $bench --tokens $eight --mode both --dtype bf16 --runs 5 --warmup 1 --out "$OUT/bench.jsonl" >"$OUT/bench.log" 2>&1
echo "bench rc=$? $(( $(date +%s) - t0 )) s"
timeout 200 ctest --test-dir /tmp/b4 -L gpu -j 8 --output-on-failure --timeout 180 >"$OUT/ctest.log" 2>&1
echo "ctest rc=$? $(( $(date +%s) - t0 )) s"
if [[ -n $base ]]; then
  wait $p3 && timeout 45 /tmp/b3/src/cuda/racesp_cuda_bench --tokens $eight --mode both --dtype bf16 --runs 3 --warmup 1 \
    --out "$OUT/bench-base.jsonl" >"$OUT/bench-base.log" 2>&1
  echo "baseline bench rc=$? $(( $(date +%s) - t0 )) s"
fi
RACESP_CUDA_VEC=0 timeout 40 $bench --tokens $eight --mode both --dtype bf16 --runs 3 --warmup 1 \
  --out "$OUT/bench-novec.jsonl" >"$OUT/bench-novec.log" 2>&1
echo "novec bench rc=$? $(( $(date +%s) - t0 )) s"
cuobjdump -sass /tmp/b4/src/cuda/CMakeFiles/racesp_cuda.dir/cuda_attention.cu.o 2>/dev/null |
  grep -oE "HMMA[.A-Z0-9]*|LDG[.A-Z0-9]*|STG[.A-Z0-9]*|LDL[.A-Z0-9]*|STL[.A-Z0-9]*|BAR[.A-Z]*" | sort | uniq -c >"$OUT/sass.txt"
timeout 75 ncu --clock-control none --section WarpStateStats --section SpeedOfLight --section Occupancy --page raw \
  -k regex:segment_kernel -c 5 $bench --tokens $((1 << 20)) --mode full --runs 1 --warmup 0 >"$OUT/ncu.txt" 2>&1
echo "ncu rc=$? $(( $(date +%s) - t0 )) s"

echo "== tests"
grep -E "tests passed|tests failed|\(Failed\)|Not Run|Timeout|\*\*\*Exception" "$OUT/ctest.log" | head -30
grep -E "16M causal" "$OUT/ctest.log" | head -2
grep -E "bf16_T203|f16_T203" "$OUT/ctest.log" | grep -oE "D[0-9]+_P.*" | head -16
echo "== sass"; cat "$OUT/sass.txt"
echo "== ncu: per segment kernel, duration, warps active, top stall reasons (cycles per issued instruction)"
python3 - "$OUT/ncu.txt" <<'PY'
import re, sys
k = None; rows = []
def flush():
    if k is None: return
    st = sorted(((v, n) for n, v in stalls.items()), reverse=True)[:7]
    print(k, '|', ' '.join(f'{n}={v:.1f}' for v, n in st), '|', ' '.join(f'{n}={v}' for n, v in other.items()))
for line in open(sys.argv[1], errors='replace'):
    if 'segment_kernel' in line and '(' in line:
        flush()
        m = re.search(r'PassE(\d)', line) or re.search(r'Pass\)(\d)', line) or re.search(r'Pass::(\w+)', line)
        k = 'pass' + (m.group(1) if m else '?'); stalls = {}; other = {}
        continue
    if k is None: continue
    f = line.split()
    if len(f) < 2: continue
    name, val = f[0], f[-1].replace(',', '')
    try: v = float(val)
    except ValueError: continue
    m = re.match(r'smsp__\w*issue_stalled_(\w+?)(?:_per_issue_active)?\.ratio$', name)
    if m: stalls[m.group(1)] = v
    elif name in ('gpu__time_duration.sum', 'sm__warps_active.avg.pct_of_peak_sustained_active',
                  'smsp__average_warp_latency_per_inst_issued.ratio', 'launch__occupancy_limit_shared_mem',
                  'launch__registers_per_thread', 'sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active'):
        other[name.split('__')[1][:28]] = val
flush()
PY
grep -ciE "error|failed" "$OUT/ncu.txt" | sed 's/^/ncu error lines: /'
echo "== bench (median_s, tokens_per_s, forward_s)"
for f in bench bench-base bench-novec; do
  [[ -f $OUT/$f.jsonl ]] && python3 -c "
import json,sys
for l in open('$OUT/$f.jsonl'):
    j=json.loads(l); print('$f', 'causal' if j['causal'] else 'full', round(j['median_s'],4), round(j['tokens_per_s']/1e6,2), 'M/s fwd', round(j['forward_s'],4))"
done
cat "$OUT/bench.jsonl"
