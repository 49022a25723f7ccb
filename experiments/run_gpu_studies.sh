#!/usr/bin/env bash
# The GPU studies of experiments/README.md, for a GPU host with CUDA, NCCL, MPI and python3 with
# torch and matplotlib (not run yet: no GPU time was left when they were written). From the
# repository root:
#
#   experiments/run_gpu_studies.sh [NAME]     # NAME: results prefix, default h200 (1 GPU) / h200x4
#
# Builds the CUDA targets (cmake preset-free, build-gpu/), then, into experiments/results/NAME-*/:
#   NAME-seqlen       racesp_cuda_bench (bf16, device-resident, NCCL), 1M..64M tokens on 1 GPU,
#                     causal and non-causal, up to the first length that does not fit
#   NAME-pl           P in 1,2,4,6 x L in 1,2,4 at 4M tokens (M = L 2^P <= 256: the shared-memory limit)
#   NAME-weak         8M tokens per GPU on 1, 2, 4 ... GPUs (all the host has)
#   NAME-strong       32M tokens on 1, 2, 4 ... GPUs
#   NAME-collectives  state sizes (H = 1, 4, 16, 64) at 64K tokens per GPU on 1, 2, 4 ... GPUs
#   NAME-baselines    the PyTorch RACE program and exact softmax (FlashAttention backend), forward +
#                     backward, stepping the length up until out-of-memory (softmax: or 60 s per step)
# The whole script takes about half an hour on one H200 (softmax alone ~10 minutes); where a
# command may run at most 10 minutes, run its lines one at a time.
# then the cost model and every plot. Each folder gets machine.txt (nvidia-smi, lscpu, versions).
set -uo pipefail
cd "$(dirname "$0")/.."
[[ -f .devdeps/setup.sh ]] && source .devdeps/setup.sh
export NCCL_NVLS_ENABLE=0   # NVLink multicast off on shared hosts (gpu-notes.md)
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
((gpus > 0)) || { echo "run_gpu_studies.sh: no GPU (nvidia-smi -L lists none)" >&2; exit 1; }
name=${1:-h200$( ((gpus > 1)) && echo "x$gpus")}
ranks=1; r=2; while ((r <= gpus)); do ranks+=",$r"; r=$((r * 2)); done
py=${PYTHON:-python3}

cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a >/tmp/racesp-cfg.log 2>&1 \
  || { tail -30 /tmp/racesp-cfg.log; exit 1; }
cmake --build build-gpu -j "$(nproc)" --target racesp racesp_cuda_bench >/tmp/racesp-build.log 2>&1 \
  || { grep -E "error" /tmp/racesp-build.log | head -30; exit 1; }
bench=build-gpu/src/cuda/racesp_cuda_bench
study() { "$py" experiments/run_study.py "$@" --bench cuda --binary "$bench" --heads 4 --dim 128; }

study seqlen --name "$name-seqlen" --ranks 1 --stop-at-failure --repeats 3 \
  --tokens-list 1048576,2097152,4194304,8388608,16777216,33554432,67108864
study pl --name "$name-pl" --ranks 1 --tokens 4194304 --planes-list 1,2,4,6 --tables-list 1,2,4 --repeats 3
if ((gpus > 1)); then
  study weak --name "$name-weak" --ranks "$ranks" --tokens 8388608 --repeats 5
  study strong --name "$name-strong" --ranks "$ranks" --tokens 33554432 --repeats 5
  study collectives --name "$name-collectives" --ranks "$ranks" --tokens 65536 --heads-list 1,4,16,64 --repeats 9
fi

# Baselines: PyTorch on the same GPU, same shapes (B=1, H=4, D=128, bf16).
out=experiments/results/$name-baselines
mkdir -p "$out"
{ nvidia-smi; "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; lscpu; } >"$out/machine.txt" 2>&1
"$py" experiments/baselines/race_torch.py --self-check || exit 1
for causal in "" --causal; do
  "$py" experiments/baselines/race_torch.py $causal --planes 4 --tables 4 --start 65536 --out "$out/baselines.jsonl"
  "$py" experiments/baselines/sdpa_torch.py $causal --start 16384 --max-seconds 60 --out "$out/baselines.jsonl"
done
"$py" experiments/baselines/race_torch.py --planes 1 --tables 1 --start 65536 --out "$out/baselines.jsonl"

"$py" experiments/cost_model.py >/dev/null
"$py" experiments/plot.py
echo "run_gpu_studies.sh: results in experiments/results/$name-*"
