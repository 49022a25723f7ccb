#!/usr/bin/env bash
# One device call that profiles the attention kernels on one H200 (gpu-notes.md, v10 onwards),
# run from the checkout's root after `source .devdeps/setup.sh`: builds the bench, runs Nsight
# Compute on one forward + backward of 2M tokens in each mode (every kernel launch: duration,
# DRAM throughput, occupancy, issue activity, stall reasons, as the raw metrics of the
# SpeedOfLight, Occupancy and WarpStateStats sections), then the bench at 1M, 4M and 16M tokens.
# Files under $OUT: build.log ncu.txt kernels.txt seqlen.jsonl.
set -uo pipefail
export NCCL_NVLS_ENABLE=0
B=${BUILD:-/tmp/b-profile}
{ timeout 60 cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a &&
  timeout 300 cmake --build "$B" -j "$(nproc)" --target racesp_cuda_bench; } >"$OUT/build.log" 2>&1 ||
  { echo "BUILD FAILED at ${SECONDS}s"; grep -E "error" "$OUT/build.log" | head -30; exit 1; }
echo "build: ${SECONDS}s"
bench=$B/src/cuda/racesp_cuda_bench
timeout 240 ncu --clock-control none --section SpeedOfLight --section Occupancy --section WarpStateStats --page raw \
  -k regex:"stream_kernel|causal_sweep_kernel|causal_totals_kernel|causal_backward_kernel|segment_kernel" \
  "$bench" --tokens $((2 << 20)) --mode both --dtype bf16 --runs 1 --warmup 0 >"$OUT/ncu.txt" 2>&1
echo "ncu rc=$? ${SECONDS}s"
# One line per kernel launch: name, then the metrics that say where its time goes.
python3 - "$OUT/ncu.txt" >"$OUT/kernels.txt" <<'PY'
import re, sys
want = ["gpu__time_duration.sum", "dram__throughput.avg.pct_of_peak_sustained_elapsed",
        "sm__warps_active.avg.pct_of_peak_sustained_active", "smsp__issue_active.avg.pct_of_peak_sustained_active",
        "launch__registers_per_thread", "launch__occupancy_limit_registers", "launch__occupancy_limit_shared_mem"]
stall = re.compile(r"smsp__average_warps_issue_stalled_(\w+)_per_issue_active\.ratio\s+(?:\S+\s+)?([\d.]+)\s*$")
name, vals, stalls = None, {}, {}
def flush():
    if name:
        top = sorted(stalls.items(), key=lambda kv: -kv[1])[:5]
        print(name, " ".join(f"{k.split('.')[0].split('__')[-1]}={v}" for k, v in vals.items()),
              "stalls:", " ".join(f"{k}={v:.2f}" for k, v in top))
for line in open(sys.argv[1], errors="replace"):
    # A launch's header: "void [racesp::cuda::]name<args>(SegmentArgs<...>) (grid)x(block), Context .."
    m = re.match(r"\s*(?:void )?(?:racesp::cuda::)?(\w+)<(.*?)>\(", line)
    if m and ("Context" in line or "Device" in line):
        flush(); name, vals, stalls = m.group(1) + "<" + m.group(2)[:60] + ">", {}, {}
        continue
    parts = line.split()
    if len(parts) >= 2 and parts[0] in want:
        vals[parts[0]] = parts[-1]
    s = stall.search(line)
    if s and s.group(1) not in ("selected",):
        stalls[s.group(1)] = float(s.group(2))
flush()
PY
cut -c1-400 "$OUT/kernels.txt"
for t in 1 4 16; do
  timeout 60 "$bench" --tokens $((t << 20)) --mode both --dtype bf16 --runs 3 --warmup 1 --out "$OUT/seqlen.jsonl" >/dev/null
  echo "bench ${t}M rc=$? ${SECONDS}s"
done
python3 -c "import json
for l in open('$OUT/seqlen.jsonl'):
    d = json.loads(l); print(d['tokens'], 'causal' if d['causal'] else 'non-causal', round(d['median_s'], 4), round(d['tokens_per_s'] / 1e6, 2), 'M tok/s', round(d['peak_device_bytes'] / 1e9, 1), 'GB')"
