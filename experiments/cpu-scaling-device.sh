#!/usr/bin/env bash
# CPU figures on the 16-core host of a GPU device machine (issues 2 and 3), in one call:
#   1. racesp bench on one rank, 1M tokens, 1..16 OpenMP threads (thread scaling of the engine);
#   2. weak scaling over MPI ranks: 1, 2, 4 ranks x 4 threads, 1M tokens per rank.
# B=1, H=4, D=128, P=4, L=4, kernel normalization, causal and non-causal. JSON lines to $OUT.
set -uo pipefail
source .devdeps/setup.sh
lscpu | grep -E "Model name|^CPU\(s\)|Thread" | tee "$OUT/cpu.txt"
cmake -S . -B build-cpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DRACESP_CUDA=OFF -DRACESP_TESTS=OFF >"$OUT/cfg.log" 2>&1 || { tail -20 "$OUT/cfg.log"; exit 1; }
cmake --build build-cpu -j 16 --target racesp >"$OUT/build.log" 2>&1 || { grep error "$OUT/build.log" | head; exit 1; }
racesp=build-cpu/src/cli/racesp
for threads in ${THREADS:-1 16}; do
  tokens=1M; [[ $threads == 1 ]] && tokens=128K
  OMP_NUM_THREADS=$threads OMP_PROC_BIND=close $racesp bench --tokens $tokens --both --repeats 3 --warmup 1 \
    | sed "s/^{/{\"omp_threads\":$threads,/" | tee -a "$OUT/cpu-threads.jsonl"
done
for ranks in ${RANKS:-1 2 4}; do
  OMP_NUM_THREADS=4 mpirun -np $ranks --bind-to none $racesp bench --tokens-per-rank 1M --both --repeats 1 --warmup 1 \
    | sed "s/^{/{\"omp_threads\":4,/" | tee -a "$OUT/cpu-weak.jsonl"
done
